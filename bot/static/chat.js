// The chat page's script (a file, not inline: the Content-Security-Policy allows only this origin's
// files). What the user or the bot wrote always goes into the page as textContent, never as HTML.
// The conversation (session id and the messages shown) lives in sessionStorage, so a reload keeps it;
// candidates and scores are shown only with ?debug=1 in the address.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const log = $('log'), form = $('f'), box = $('m'), send = $('send'), typing = $('typing'), resetButton = $('reset');
  const DEBUG = new URLSearchParams(location.search).get('debug') === '1';
  const SID_KEY = 'dialogbert-sid', LOG_KEY = 'dialogbert-log', MAX_SHOWN = 200;
  const TEXT = {
    ko: {
      reset: '새 대화', resetLabel: '새 대화 시작 (지금까지의 대화를 지워요)', send: '보내기', input: '메시지',
      log: '대화', typing: '답장을 쓰는 중이에요', retry: '다시 시도', notSent: '보내지 못한 메시지',
      offline: '서버에 연결할 수 없어요. 연결을 확인하고 다시 시도해 주세요.',
      tooMany: (s) => '메시지를 너무 많이 보냈어요. ' + (s ? s + '초 뒤에' : '잠시 뒤에') + ' 다시 보내 주세요.',
      tooLong: '메시지가 너무 길어요. 줄여서 다시 보내 주세요.',
      refused: '이 메시지는 보낼 수 없어요. 특수 문자를 빼고 다시 써 주세요.',
      failed: '답장을 받지 못했어요. 잠시 뒤에 다시 시도해 주세요.',
    },
    en: {
      reset: 'New chat', resetLabel: 'Start a new chat (clears this conversation)', send: 'Send', input: 'Message',
      log: 'Conversation', typing: 'The bot is typing a reply', retry: 'Try again', notSent: 'Message not sent',
      offline: "Can't reach the server. Check your connection and try again.",
      tooMany: (s) => 'Too many messages. Please wait a moment' + (s ? ' (' + s + ' s)' : '') + ' and send again.',
      tooLong: 'That message is too long. Please shorten it and send it again.',
      refused: "That message can't be sent. Please remove any unusual characters and try again.",
      failed: "Sorry, the reply didn't come through. Please try again in a moment.",
    },
  };
  const UI = (navigator.language || '').toLowerCase().startsWith('ko') ? 'ko' : 'en';

  // Korean or English, as the server decides the reply's language: more Hangul than Latin letters is Korean
  function langOf(text) {
    const ko = (text.match(/[\u1100-\u11ff\u3130-\u318f\uac00-\ud7a3]/g) || []).length;
    const en = (text.match(/[A-Za-z]/g) || []).length;
    return ko + en === 0 ? UI : ko >= en ? 'ko' : 'en';
  }

  function load() {
    try {
      const items = JSON.parse(sessionStorage.getItem(LOG_KEY) || '[]');
      if (Array.isArray(items) && items.every((m) => m && (m.who === 'me' || m.who === 'bot') && typeof m.text === 'string')) {
        return items;
      }
    } catch (e) { /* a broken entry: start afresh */ }
    return [];
  }

  let sid = sessionStorage.getItem(SID_KEY), shown = load(), waiting = false, epoch = 0;

  function save() {
    shown = shown.slice(-MAX_SHOWN);
    try {
      if (sid) sessionStorage.setItem(SID_KEY, sid);
      sessionStorage.setItem(LOG_KEY, JSON.stringify(shown));
    } catch (e) { /* storage full or off: the page works, a reload forgets */ }
  }

  function scroll() { log.scrollTop = log.scrollHeight; }

  function bubble(who, text, candidates) {
    const row = document.createElement('div');
    row.className = 'row ' + who;
    const b = document.createElement('div');
    b.className = 'bubble';
    b.textContent = text;
    row.appendChild(b);
    log.appendChild(row);
    if (DEBUG && Array.isArray(candidates) && candidates.length) {
      const d = document.createElement('details'), s = document.createElement('summary');
      d.className = 'cands';
      s.textContent = 'candidates';
      d.appendChild(s);
      for (const c of candidates) {
        const p = document.createElement('div');
        p.textContent = (typeof c.score === 'number' ? c.score.toFixed(3) : '?') + '  ' + String(c.text);
        d.appendChild(p);
      }
      log.appendChild(d);
    }
    scroll();
    return row;
  }

  function updateRetry() {
    for (const b of log.querySelectorAll('button.retry')) b.disabled = waiting || Date.now() < Number(b.dataset.until || 0);
  }

  function setWaiting(on) {
    waiting = on;
    send.disabled = on;
    typing.hidden = !on;
    log.setAttribute('aria-busy', String(on));
    updateRetry();
    if (on) scroll();
  }

  function clearErrors() { for (const e of log.querySelectorAll('.err')) e.remove(); }

  function showError(lang, message, retry, waitSeconds) {
    clearErrors();
    const e = document.createElement('div'), p = document.createElement('span');
    e.className = 'err';
    e.setAttribute('role', 'alert');
    p.textContent = message;
    e.appendChild(p);
    if (retry) {
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'retry';
      b.textContent = TEXT[lang].retry;
      if (waitSeconds) {
        b.dataset.until = String(Date.now() + waitSeconds * 1000);
        setTimeout(updateRetry, waitSeconds * 1000 + 50);
      }
      b.addEventListener('click', () => {
        if (b.disabled || waiting) return;
        e.remove();
        retry();
        box.focus();
      });
      e.appendChild(b);
    }
    log.appendChild(e);
    updateRetry();
    scroll();
  }

  function retryAfter(r) {
    const v = (r.headers.get('Retry-After') || '').trim();
    const s = /^\d+$/.test(v) ? parseInt(v, 10) : Math.ceil((Date.parse(v) - Date.now()) / 1000);
    return Number.isFinite(s) && s > 0 ? Math.min(s, 3600) : 0;
  }

  function forget(id) {   // the server's copy of a conversation the page no longer shows
    fetch('api/reset', {method: 'POST', headers: {'Content-Type': 'application/json'},
                        body: JSON.stringify({session_id: id})}).catch(() => {});
  }

  async function ask(text, row) {
    const lang = langOf(text), mine = epoch;
    row.classList.remove('failed');
    row.removeAttribute('aria-label');
    setWaiting(true);
    let r = null, body = null;
    try {
      r = await fetch('api/chat', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                   body: JSON.stringify({message: text, session_id: sid})});
      body = await r.json().catch(() => null);   // a proxy's HTML error page is no JSON
    } catch (e) { /* the server is down or unreachable: r stays null */ }
    if (mine !== epoch) {   // the conversation was reset while this was on its way
      if (body && typeof body.session_id === 'string') forget(body.session_id);
      return;
    }
    setWaiting(false);
    if (r && r.ok && body && typeof body.reply === 'string' && typeof body.session_id === 'string') {
      sid = body.session_id;
      shown.push({who: 'me', text}, {who: 'bot', text: body.reply, ...(DEBUG ? {candidates: body.candidates} : {})});
      save();
      bubble('bot', body.reply, body.candidates);
      return;
    }
    const t = TEXT[lang], again = () => ask(text, row);
    if (r && (r.status === 400 || r.status === 413)) {   // sending it again cannot help: back into the box
      row.remove();
      showError(lang, r.status === 413 ? t.tooLong : t.refused);
      if (!box.value) box.value = text;
      box.focus();
      return;
    }
    row.classList.add('failed');
    row.setAttribute('aria-label', t.notSent);
    if (!r) showError(lang, t.offline, again);
    else if (r.status === 429) { const s = retryAfter(r); showError(lang, t.tooMany(s), again, s); }
    else showError(lang, t.failed, again);
  }

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    if (waiting) return;   // one message at a time: the next one goes with the session id this one gets
    const text = box.value.trim();
    if (!text) return;
    box.value = '';
    box.focus();   // typing goes on in the box, also after a click on the button
    clearErrors();
    ask(text, bubble('me', text));
  });

  resetButton.addEventListener('click', () => {
    const old = sid;
    epoch += 1;
    sid = null;
    shown = [];
    sessionStorage.removeItem(SID_KEY);
    sessionStorage.removeItem(LOG_KEY);
    log.replaceChildren();
    setWaiting(false);
    box.focus();
    if (old) forget(old);
  });

  const t = TEXT[UI];
  document.documentElement.lang = UI;
  for (const el of document.querySelectorAll('[data-label]')) el.textContent = t[el.dataset.label];
  resetButton.setAttribute('aria-label', t.resetLabel);
  resetButton.title = t.resetLabel;
  log.setAttribute('aria-label', t.log);
  $('debug-badge').hidden = !DEBUG;
  for (const m of shown) bubble(m.who, m.text, m.candidates);
})();
