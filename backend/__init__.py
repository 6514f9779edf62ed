"""Growing NCA studio: the NCA core (`backend.nca`) and the services built on it."""
