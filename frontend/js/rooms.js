// "Open a room": make a room on a model (POST /api/rooms) and go to its host page, which shows the QR
// code and join code for everyone else (room.html; docs/api.md, "Rooms").

import { createRoom } from './api.js';

/** Make a room on `modelId` and open its host page; `say(message)` reports a refusal (e.g. too many rooms). */
export async function openRoom(modelId, say) {
  try {
    const room = await createRoom(modelId);
    window.location.assign(room.host_url);
  } catch (error) {
    say(`Could not open a room: ${error.message}`);
  }
}

/** The Watch view's button: a room on the model picked there. */
export function initRoomButton() {
  const button = document.getElementById('open-room');
  const status = document.getElementById('watch-status');
  button.addEventListener('click', () => {
    const model = document.getElementById('model-select').value;
    if (model) openRoom(model, (message) => { status.textContent = message; });
  });
}
