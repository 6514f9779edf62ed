// "Use from the command line": this browser's owner token, a curl example that uses it, and a field to
// paste the token of another browser (its jobs come here). Asking for it also gives a first visit its owner.

import { adoptToken, getMe } from './api.js';

export async function initOwnerPanel(onChanged) {
  const panel = document.getElementById('cli-panel');
  if (!panel) return;
  const tokenField = panel.querySelector('#owner-token');
  const example = panel.querySelector('#owner-curl');
  const status = panel.querySelector('#owner-status');

  function show(me) {
    tokenField.value = me.token ?? '';
    example.textContent = [
      `curl -H 'X-Owner-Token: ${me.token ?? '<token>'}' \\`,
      `     -F image=@photo.png -F minutes=5 ${location.origin}/api/jobs`,
      `curl -H 'X-Owner-Token: ${me.token ?? '<token>'}' ${location.origin}/api/jobs`,
    ].join('\n');
  }
  try {
    show(await getMe());
  } catch (error) {
    status.textContent = `Could not read your owner token: ${error.message}`;
  }
  panel.querySelector('#owner-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const field = panel.querySelector('#owner-paste');
    try {
      show(await adoptToken(field.value));
      field.value = '';
      status.textContent = 'This browser now uses that token: its jobs are listed here.';
      onChanged();
    } catch (error) {
      status.textContent = error.message;
    }
  });
}
