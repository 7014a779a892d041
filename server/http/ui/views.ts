import type { Boot, SecurityEvent } from '../../events/timeline.ts';
import { bytes, duration, esc, shortId, time } from './html.ts';
import { bootSpanMs, failureOf, waterfall, type FleetRow, type InboxEntry, type effectiveConfig } from './model.ts';

export function stateBadge(row: Pick<FleetRow, 'state' | 'phase'>): string {
  const label = row.state === 'booting' ? `booting · ${row.phase ?? '…'}` : row.state;
  return `<span class="state s-${row.state}">${esc(label)}</span>`;
}

/** One fleet row; the live stream sends this same HTML, so the page and its updates never disagree. */
export function fleetRowHtml(row: FleetRow): string {
  const search = [row.hostname, row.mac, row.image, row.imageId, row.state, row.phase, row.attention].filter(Boolean).join(' ').toLowerCase();
  const name = row.hostname ? esc(row.hostname) : '<span class="muted">unknown</span>';
  return `<tr data-mac="${esc(row.mac)}" data-state="${row.state}" data-known="${row.known}" data-attention="${esc(row.attention ?? '')}" data-search="${esc(search)}">`
    + `<td><a href="/machines/${esc(row.mac)}">${name}</a></td>`
    + `<td><code>${esc(row.mac)}</code></td>`
    + `<td>${row.image ? esc(row.image) : '<span class="muted">—</span>'} ${shortId(row.imageId)}</td>`
    + `<td>${stateBadge(row)}${row.attention ? ` <span class="why">${esc(row.attention)}</span>` : ''}</td>`
    + `<td>${duration(row.durationMs)}</td>`
    + `<td>${time(row.lastSeen)}</td></tr>`;
}

const FLEET_HEAD = '<thead><tr><th scope="col">Hostname</th><th scope="col">MAC</th><th scope="col">Image / id</th><th scope="col">State</th><th scope="col">Last boot</th><th scope="col">Last seen</th></tr></thead>';

export function fleetBody(rows: FleetRow[]): string {
  const attention = rows.filter((r) => r.attention);
  const rest = rows.filter((r) => !r.attention);
  const counts = (['up', 'booting', 'failed', 'never'] as const).map((s) => `${rows.filter((r) => r.state === s).length} ${s}`).join(' · ');
  return `<h1>Fleet</h1>
<p class="summary" id="summary">${rows.length} machines · ${counts}</p>
<form class="filters" role="search">
  <label for="q">Search</label> <input id="q" type="search" placeholder="hostname, MAC, image… (press /)" autocomplete="off">
  <label for="state">State</label> <select id="state"><option value="">any</option><option>booting</option><option>up</option><option>failed</option><option>never</option></select>
  <label><input id="unknown" type="checkbox" checked> unknown MACs</label>
</form>
<section aria-labelledby="attention-h"><h2 id="attention-h">Needs attention <span class="count" id="attention-count">${attention.length}</span></h2>
<table class="fleet">${FLEET_HEAD}<tbody id="attention">${attention.map(fleetRowHtml).join('')}</tbody></table></section>
<section aria-labelledby="fleet-h"><h2 id="fleet-h">All machines</h2>
<table class="fleet">${FLEET_HEAD}<tbody id="fleet">${rest.map(fleetRowHtml).join('')}</tbody></table></section>`;
}

export function waterfallHtml(boot: Boot): string {
  const { bars, totalMs } = waterfall(boot);
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => `<span style="left:${f * 100}%">${duration(f * totalMs)}</span>`).join('');
  const rows = bars
    .map(({ record, left, width, startMs }) => {
      const label = `${record.phase} (${record.source})`;
      const facts = [record.durationMs !== undefined ? duration(record.durationMs) : null, record.bytes !== undefined ? bytes(record.bytes) : null].filter(Boolean).join(', ');
      return `<li class="wf-row p-${esc(record.phase)} src-${record.source}"><span class="wf-label">${esc(label)}</span>`
        + `<span class="wf-track"><span class="wf-bar${record.durationMs ? '' : ' instant'}" style="left:${left.toFixed(2)}%;width:${width.toFixed(2)}%" title="+${duration(startMs)}"></span></span>`
        + `<span class="wf-facts">+${duration(startMs)}${facts ? ` · ${esc(facts)}` : ''}${record.detail ? ` · <span class="detail">${esc(record.detail)}</span>` : ''}</span></li>`;
    })
    .join('');
  return `<div class="waterfall"><div class="wf-axis" aria-hidden="true">${ticks}</div><ol class="wf">${rows}</ol>${
    boot.droppedPhases ? `<p class="muted">${boot.droppedPhases} more records not kept</p>` : ''
  }</div>`;
}

/** The live part of a machine page (the stream replaces it on every new record). */
export function machineLive(mac: string, row: FleetRow, boots: readonly Boot[], security: readonly SecurityEvent[]): string {
  const current = boots.at(-1);
  const failure = current ? failureOf(current) : null;
  const previous = boots.slice(0, -1).reverse();
  return `<p class="facts">${stateBadge(row)} ${row.attention ? `<span class="why">${esc(row.attention)}</span>` : ''} · image ${esc(row.image ?? '—')} ${shortId(row.imageId)} · last seen ${time(row.lastSeen)}</p>
${failure ? `<div class="failure" role="alert"><h2>Boot failed at <strong>${esc(failure.step)}</strong></h2><pre>${esc(failure.detail)}</pre></div>` : ''}
<h2>Current boot</h2>
${current ? `<p class="muted">started ${time(current.startedAt)} · ${current.state === 'booting' ? 'in progress' : duration(bootSpanMs(current))} · boot id <code>${esc(current.id)}</code></p>${waterfallHtml(current)}` : `<p>${esc(mac)} has not booted since the server started.</p>`}
${previous.length ? `<h2>Previous boots</h2>${previous.map((b) => `<details><summary>${time(b.startedAt)} · <span class="state s-${b.state}">${b.state}</span> · ${duration(bootSpanMs(b))}</summary>${waterfallHtml(b)}</details>`).join('')}` : ''}
${security.length ? `<h2>Refused requests</h2><table><thead><tr><th scope="col">When</th><th scope="col">Kind</th><th scope="col">Peer</th><th scope="col">Detail</th></tr></thead><tbody>${security
    .map((s) => `<tr><td>${time(s.at)}</td><td>${esc(s.kind)}</td><td>${esc(s.peer ?? '')}</td><td>${esc(s.detail)}</td></tr>`)
    .join('')}</tbody></table>` : ''}`;
}

export interface LayerListing {
  files: { path: string; type: string; mode: number; size: number | null }[];
  truncated: boolean;
  error: string | null;
}

export function machineStatic(config: ReturnType<typeof effectiveConfig>, layer: LayerListing | null): string {
  if (!config) return '<h2>Config</h2><p>This MAC is not in the config: it gets the unknown-MAC policy. Add it from the <a href="/inbox">inbox</a>.</p>';
  const dl = (pairs: [string, string][]) => `<dl class="kv">${pairs.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${v}</dd>`).join('')}</dl>`;
  const layerHtml = !layer
    ? '<p class="muted">No machine folder: the layer holds only the generated files (hostname, accounts).</p>'
    : layer.error
      ? `<p class="error">${esc(layer.error)}</p>`
      : `<table><thead><tr><th scope="col">Path</th><th scope="col">Type</th><th scope="col">Mode</th><th scope="col">Size</th></tr></thead><tbody>${layer.files
          .map((f) => `<tr><td><code>${esc(f.path)}</code></td><td>${f.type}</td><td>${f.mode.toString(8).padStart(4, '0')}</td><td>${bytes(f.size)}</td></tr>`)
          .join('')}</tbody></table>${layer.truncated ? '<p class="muted">(first 500 entries)</p>' : ''}`;
  return `<h2>Effective config</h2>${dl([
    ['hostname', esc(config.hostname)],
    ['image', `${esc(config.image)}${config.root ? ` (root: ${esc(config.root)})` : ''}`],
    ['cmdline', `<code>${esc(config.cmdline || '—')}</code>`],
    ['ip', esc(config.ip ?? '—')],
    ['vars', config.vars.length ? config.vars.map(([k, v]) => `<code>${esc(k)}=${esc(v)}</code>`).join(' ') : '—'],
    ['users', esc(config.users.join(', ') || '—')],
    ['ssh keys', String(config.sshKeys)],
    ['file attributes', esc(config.files.join('; ') || '—')],
  ])}<h2>Top layer files</h2>${config.folder ? `<p class="muted">from <code>${esc(config.folder)}</code></p>` : ''}${layerHtml}`;
}

export interface ImageView {
  name: string;
  source: string;
  root: string;
  currentId: string | null;
  state: string;
  error: string | null;
  progress: string | null;
  builds: { id: string; builtAt: string | null; current: boolean; machines: string[]; nbdClients: number }[];
}

/** Admin only, outside the live section (the stream's HTML is the same for every viewer). */
export function imageActions(images: ImageView[], csrf: string | null): string {
  return `<div class="actions">${images
    .map((image) => `<form method="post" action="/images/${encodeURIComponent(image.name)}/rebuild" class="inline"><input type="hidden" name="_csrf" value="${esc(csrf ?? '')}"><button type="submit">Rebuild ${esc(image.name)}</button></form>`)
    .join(' ')}</div>`;
}

export function imagesLive(images: ImageView[]): string {
  if (!images.length) return '<p>No images configured.</p>';
  return images
    .map(
      (image) => `<section class="image" data-image="${esc(image.name)}"><h2>${esc(image.name)} <span class="state s-${esc(image.state)}">${esc(image.state)}</span></h2>
<p><code>${esc(image.source)}</code> · root ${esc(image.root)} · current ${shortId(image.currentId)}${image.progress ? ` · <span class="progress">${esc(image.progress)}</span>` : ''}</p>
${image.error ? `<div class="failure" role="alert"><h3>Last build error</h3><pre>${esc(image.error)}</pre></div>` : ''}
<table><thead><tr><th scope="col">Id</th><th scope="col">Built</th><th scope="col">Machines on it</th><th scope="col">NBD clients</th></tr></thead><tbody>${image.builds
        .map(
          (b) => `<tr${b.current ? ' class="current"' : ''}><td>${shortId(b.id)}${b.current ? ' (current)' : ''}</td><td>${time(b.builtAt)}</td><td>${
            b.machines.length ? b.machines.map((m) => `<a href="/machines/${esc(m.split(' ')[0])}">${esc(m)}</a>`).join(', ') : '<span class="muted">none</span>'
          }</td><td>${b.nbdClients}</td></tr>`,
        )
        .join('')}</tbody></table></section>`,
    )
    .join('');
}

export function inboxBody(entries: InboxEntry[], images: string[], defaultImage: string | undefined, admin: boolean, csrf: string | null, notice: string | null): string {
  const rows = entries
    .map((e) => {
      const add = admin
        ? `<form method="post" action="/inbox/add" class="add"><input type="hidden" name="_csrf" value="${esc(csrf ?? '')}"><input type="hidden" name="mac" value="${esc(e.mac)}">`
          + `<label>Hostname <input name="hostname" required pattern="[A-Za-z0-9]([A-Za-z0-9\\-]{0,61}[A-Za-z0-9])?" maxlength="63"></label> `
          + `<label>Image <select name="image">${images.map((i) => `<option${i === defaultImage ? ' selected' : ''}>${esc(i)}</option>`).join('')}</select></label> `
          + `<button type="submit">Add</button></form>`
        : '';
      return `<tr data-mac="${esc(e.mac)}"><td><a href="/machines/${esc(e.mac)}"><code>${esc(e.mac)}</code></a></td><td>${esc(e.vendorClass ?? '—')}</td><td>${esc(e.arch ?? '—')}</td><td>${esc(e.address ?? '—')}</td><td>${time(e.firstSeen)}</td><td>${time(e.lastSeen)}</td><td class="seen">${e.seen.map((s) => `<div>${esc(s)}</div>`).join('')}</td>${admin ? `<td>${add}</td>` : ''}</tr>`;
    })
    .join('');
  return `<h1>Inbox</h1><p>Machines that PXE-booted but are not in the config.${admin ? ' “Add” writes one into the config file (its comments and formatting stay); the server reloads it and the machine boots its image on its next try.' : ' Log in with the admin token to add them.'}</p>
${notice ? `<p class="notice" role="status">${esc(notice)}</p>` : ''}
${entries.length ? `<table class="inbox"><thead><tr><th scope="col">MAC</th><th scope="col">Vendor class</th><th scope="col">Architecture</th><th scope="col">Address</th><th scope="col">First seen</th><th scope="col">Last seen</th><th scope="col">What it asked</th>${admin ? '<th scope="col">Add</th>' : ''}</tr></thead><tbody>${rows}</tbody></table>` : '<p>Empty: every machine that booted is configured.</p>'}`;
}

export function loginBody(message: string | null, closed: boolean): string {
  return `<h1>Log in</h1>${message ? `<p class="error" role="alert">${esc(message)}</p>` : ''}${
    closed ? '<p>No token is configured: set <code>server.api.readToken</code> or <code>server.api.adminToken</code> (or <code>server.api.public: true</code>) in the config.</p>' : ''
  }<form method="post" action="/login" class="login"><label for="token">Token (server.api.readToken or adminToken)</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus><button type="submit">Log in</button></form>`;
}
