"""Product exports of a trained model, one layer above the core (backend.nca).

What lives here and why it is not the core: the core is the CA itself — the model, its training
recipe, its file format (and the Distill demo's, which is a model format too), the turning of an
image into a target (the GrabCut cut-out included: the trainer cannot start without a target, and
the CLI trains from a photo) and the evaluation functions the trainer and these exports share. It
imports nothing of ours and reads no file outside backend/nca.

These are what the product makes of a model for people: the one-file web player (`player`, which
ships the browser CA of frontend/player/ and so reads files of the web app at run time), videos
for sharing (`video`: encoder settings, size limits of the API) and the model card with its
verdict words and picture sheet (`card`). The API serves them and the `nca` command line writes
them (`python -m backend.exports player|video|card`, backend.exports.cli); both stay above the core
(the layers in .importlinter).
"""
