/** Escapes text for HTML element content and double-quoted attributes. */
const ENTITIES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

export function esc(value: unknown): string {
  const text = String(value ?? '');
  return /[&<>"']/.test(text) ? text.replace(/[&<>"']/g, (c) => ENTITIES[c]!) : text;
}

/** A time the browser shows in its own locale (app.js rewrites the text; without JS the ISO form stays). */
export function time(iso: string | null | undefined): string {
  return iso ? `<time datetime="${esc(iso)}">${esc(iso)}</time>` : '<span class="muted">—</span>';
}

export function duration(ms: number | null | undefined): string {
  if (ms === null || ms === undefined) return '—';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`;
}

export function bytes(n: number | null | undefined): string {
  if (n === null || n === undefined) return '';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

export function shortId(id: string | null | undefined): string {
  return id ? `<code title="${esc(id)}">${esc(id.slice(0, 12))}</code>` : '<span class="muted">—</span>';
}

export interface PageChrome {
  title: string;
  nav: 'fleet' | 'images' | 'inbox' | 'machine' | 'login';
  role: 'read' | 'admin' | null;
  /** Cookie sessions get a logout form (it needs the CSRF token). */
  csrf: string | null;
  inboxCount?: number;
  /** The SSE stream this page follows, if any. */
  live?: string;
}

export function page(chrome: PageChrome, body: string): string {
  const link = (href: string, key: PageChrome['nav'], label: string) =>
    `<a href="${href}"${chrome.nav === key ? ' aria-current="page"' : ''}>${label}</a>`;
  const nav = chrome.role
    ? `<nav aria-label="Main">${link('/', 'fleet', 'Fleet')}${link('/images', 'images', 'Images')}${link('/inbox', 'inbox', `Inbox${chrome.inboxCount ? ` <span class="count">${chrome.inboxCount}</span>` : ''}`)}</nav>
       <div class="who">${chrome.role === 'admin' ? 'admin' : 'read-only'}${
         chrome.csrf ? ` <form method="post" action="/logout" class="inline"><input type="hidden" name="_csrf" value="${esc(chrome.csrf)}"><button type="submit">Log out</button></form>` : ''
       }</div>`
    : '';
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(chrome.title)} · netboot</title><link rel="stylesheet" href="/ui/style.css"></head>
<body${chrome.live ? ` data-live="${esc(chrome.live)}"` : ''}>
<a class="skip" href="#main">Skip to content</a>
<header><span class="brand">netboot</span>${nav}<span id="live-status" class="live-status" aria-live="polite"></span></header>
<main id="main">${body}</main>
<script src="/ui/app.js" defer></script>
</body></html>`;
}
