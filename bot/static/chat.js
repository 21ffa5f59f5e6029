// the chat page's script (a file, not inline: the Content-Security-Policy allows only this origin's files)
const log = document.getElementById('log'), form = document.getElementById('f'), box = document.getElementById('m');
let sid = sessionStorage.getItem('dialogbert-sid');
function add(who, text, cands) {
  const row = document.createElement('div'); row.className = 'row ' + who;
  const b = document.createElement('div'); b.className = 'bubble'; b.textContent = text; row.appendChild(b);
  log.appendChild(row);
  if (cands && cands.length) {
    const d = document.createElement('details'); d.className = 'cands';
    const s = document.createElement('summary'); s.textContent = 'candidates'; d.appendChild(s);
    for (const c of cands) { const p = document.createElement('div'); p.textContent = c.score.toFixed(3) + '  ' + c.text; d.appendChild(p); }
    log.appendChild(d);
  }
  log.scrollTop = log.scrollHeight;
}
form.addEventListener('submit', async (e) => {
  e.preventDefault();
  const text = box.value.trim(); if (!text) return;
  box.value = ''; add('me', text);
  try {
    const r = await fetch('api/chat', {method:'POST', headers:{'Content-Type':'application/json'},
                                       body: JSON.stringify({message:text, session_id:sid})});
    const j = await r.json();
    if (!r.ok) throw new Error(j.error || r.statusText);
    sid = j.session_id; sessionStorage.setItem('dialogbert-sid', sid);
    add('bot', j.reply, j.candidates);
  } catch (err) {
    const p = document.createElement('div'); p.className = 'err'; p.textContent = String(err); log.appendChild(p);
  }
});
document.getElementById('reset').addEventListener('click', async () => {
  if (sid) await fetch('api/reset', {method:'POST', headers:{'Content-Type':'application/json'}, body: JSON.stringify({session_id:sid})});
  sid = null; sessionStorage.removeItem('dialogbert-sid'); log.innerHTML = '';
});
