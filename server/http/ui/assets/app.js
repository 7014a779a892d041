// netboot status page: local times, filtering, and the live stream (Server-Sent Events).
// No framework: the server renders every piece of HTML, this only swaps pieces in.
(() => {
  'use strict';
  const applied = { rows: 0, events: 0, ms: 0 };
  window.netbootLive = applied;

  const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'short', timeStyle: 'medium' });
  function localTimes(root) {
    for (const el of root.querySelectorAll('time[datetime]')) {
      const d = new Date(el.getAttribute('datetime'));
      if (!Number.isNaN(d.getTime())) {
        el.textContent = timeFormat.format(d);
        el.title = el.getAttribute('datetime');
      }
    }
  }

  const q = document.getElementById('q');
  const stateSel = document.getElementById('state');
  const unknown = document.getElementById('unknown');
  function matches(row) {
    const text = q ? q.value.trim().toLowerCase() : '';
    if (text && !text.split(/\s+/).every((w) => row.dataset.search.includes(w))) return false;
    if (stateSel && stateSel.value && row.dataset.state !== stateSel.value) return false;
    if (unknown && !unknown.checked && row.dataset.known === 'false') return false;
    return true;
  }
  function filter(rows) {
    for (const row of rows) row.hidden = !matches(row);
  }
  // Counted once, then kept by every row swap (a recount of 1,000 rows per update is what made it slow).
  const counts = { up: 0, booting: 0, failed: 0, never: 0 };
  let total = 0;
  for (const tr of document.querySelectorAll('tr[data-state]')) {
    counts[tr.dataset.state]++;
    total++;
  }
  function summarise() {
    const summary = document.getElementById('summary');
    if (summary) summary.textContent = `${total} machines · ${Object.entries(counts).map(([state, n]) => `${n} ${state}`).join(' · ')}`;
  }
  function filterAll() {
    filter(document.querySelectorAll('tr[data-search]'));
    const count = document.getElementById('attention-count');
    if (count) count.textContent = String(document.querySelectorAll('#attention tr').length);
  }
  for (const el of [q, stateSel, unknown]) if (el) el.addEventListener('input', filterAll);
  // Filtering is live; Enter in the search box must not reload the page.
  for (const form of document.querySelectorAll('form.filters')) form.addEventListener('submit', (e) => e.preventDefault());
  document.addEventListener('keydown', (e) => {
    if (e.key === '/' && q && document.activeElement !== q && !/^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement.tagName)) {
      e.preventDefault();
      q.focus();
    } else if (e.key === 'Escape' && document.activeElement === q) {
      q.value = '';
      filterAll();
    }
  });

  const attention = document.getElementById('attention');
  const fleet = document.getElementById('fleet');
  const template = document.createElement('template');
  function applyRows(rows) {
    const started = performance.now();
    // A big burst looks every row up once; a few updates ask the DOM for just their rows.
    let byMac = null;
    if (rows.length > 50) {
      byMac = new Map();
      for (const tr of document.querySelectorAll('tr[data-mac]')) byMac.set(tr.dataset.mac, tr);
    }
    for (const { mac, html, attention: why } of rows) {
      template.innerHTML = html;
      const row = template.content.firstElementChild;
      localTimes(row);
      row.hidden = !matches(row);
      const old = byMac ? byMac.get(mac) : document.querySelector(`tr[data-mac="${CSS.escape(mac)}"]`);
      const target = why ? attention : fleet;
      const keepFocus = old && old.contains(document.activeElement);
      if (old) counts[old.dataset.state]--;
      else total++;
      counts[row.dataset.state]++;
      if (old && old.parentElement === target) old.replaceWith(row);
      else {
        if (old) old.remove();
        target.prepend(row);
      }
      if (keepFocus) row.querySelector('a').focus();
      if (byMac) byMac.set(mac, row);
      applied.rows++;
    }
    const count = document.getElementById('attention-count');
    if (count) count.textContent = String(attention.children.length);
    summarise();
    applied.ms += performance.now() - started;
  }

  function replaceLive(html) {
    const live = document.getElementById('live');
    if (!live) return;
    const open = new Set([...live.querySelectorAll('details[open] summary')].map((s) => s.textContent));
    live.innerHTML = html;
    for (const s of live.querySelectorAll('details summary')) if (open.has(s.textContent)) s.parentElement.open = true;
    localTimes(live);
  }

  localTimes(document);
  filterAll();

  const url = document.body.dataset.live;
  const status = document.getElementById('live-status');
  if (url && 'EventSource' in window) {
    const source = new EventSource(url);
    source.addEventListener('open', () => { status.textContent = 'live'; status.dataset.state = 'open'; });
    source.addEventListener('error', () => { status.textContent = 'reconnecting…'; status.dataset.state = 'error'; });
    source.addEventListener('rows', (e) => { applyRows(JSON.parse(e.data)); applied.events++; });
    source.addEventListener('machine', (e) => { replaceLive(JSON.parse(e.data).html); applied.events++; });
    source.addEventListener('images', (e) => { replaceLive(JSON.parse(e.data).html); applied.events++; });
    source.addEventListener('reload', () => location.reload());
    window.addEventListener('pagehide', () => source.close());
  }
})();
