// provisr dashboard (docs/ui.md). Plain modern JavaScript, no framework, no build step.
//
// Data flow: the page subscribes to GET /events first, then reads GET /status, so no transition
// can fall between the two; every transition updates its row at once and queues a re-read of
// that instance's status (events carry no pid). DOM work is batched per animation frame and
// rows are updated in place, keyed by instance name. Streams are read with fetch() so that they
// carry the bearer token, which lives in this module's memory only.

const API = document.querySelector('meta[name="provisr-api"]').content;
const STATES = ['running', 'starting', 'backoff', 'stopping', 'stopped', 'exited', 'failed'];
// States with no process: stop buttons are off, start buttons on.
const DOWN = new Set(['stopped', 'exited', 'failed']);
const LOG_LINES_KEPT = 5000;
const ACTIVITY_KEPT = 100;
// Past this many instances waiting for a re-read, one full GET /status is cheaper.
const REFRESH_ALL_ABOVE = 100;

const $ = (id) => document.getElementById(id);
const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: 'base' });

// ---------------------------------------------------------------------------------------------
// Requests. The token is never stored anywhere but here.

let token = null;
let tokenWaiters = [];

class HttpError extends Error {
  constructor(status, message, sentWith) {
    super(message);
    this.status = status;
    // The token the refused request carried: a refusal of an older token says nothing about
    // the one in use now.
    this.sentWith = sentWith;
  }
}

function headers(json) {
  const h = {};
  if (token) h.Authorization = `Bearer ${token}`;
  if (json) h['Content-Type'] = 'application/json';
  return h;
}

async function errorOf(res, sentWith) {
  let message = `${res.status} ${res.statusText}`;
  try {
    const body = await res.json();
    if (body && body.error) message = body.error;
  } catch { /* not JSON: keep the status line */ }
  return new HttpError(res.status, message, sentWith);
}

async function request(path, { method = 'GET', body, signal } = {}) {
  const sentWith = token;
  const res = await fetch(API + path, {
    method,
    headers: headers(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    cache: 'no-store',
    credentials: 'omit',
  });
  if (!res.ok) throw await errorOf(res, sentWith);
  return res.json();
}

const isAuth = (e) => e instanceof HttpError && (e.status === 401 || e.status === 403);

/** Resolves once the user submitted a token (or cleared it). */
function tokenChanged() {
  return new Promise((resolve) => tokenWaiters.push(resolve));
}

// ---------------------------------------------------------------------------------------------
// Server-sent events over fetch(): EventSource cannot send an Authorization header.

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
  });
}

/**
 * Follows an SSE endpoint until closed: reconnects with backoff (0.5 s doubling to 15 s, reset
 * once a stream opened). `onOpen` runs when a connection delivered its first bytes (the server
 * opens every stream with a comment or its backlog); `onEvent(type, data)` per event;
 * `onDrop(delayMs)` when a connection is lost; `onRefused(error)` for 401/403, after which
 * the stream waits for a new token; `onFatal(error)` for other 4xx, which end it.
 */
function follow(path, { onOpen, onEvent, onDrop, onRefused, onFatal }) {
  const stop = new AbortController();
  (async () => {
    let attempt = 0;
    while (!stop.signal.aborted) {
      try {
        const sentWith = token;
        const res = await fetch(API + path, {
          headers: headers(false),
          signal: stop.signal,
          cache: 'no-store',
          credentials: 'omit',
        });
        if (!res.ok) {
          const err = await errorOf(res, sentWith);
          if (isAuth(err)) {
            // Refused with a token since replaced: try the new one at once.
            if (sentWith !== token) continue;
            onRefused(err);
            await Promise.race([tokenChanged(), sleep(1e9, stop.signal)]);
            continue;
          }
          if (err.status >= 400 && err.status < 500) {
            onFatal?.(err);
            return;
          }
          throw err;
        }
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        let opened = false;
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          if (!opened) {
            opened = true;
            attempt = 0;
            onOpen();
          }
          buf += value;
          // One chunk can hold a thousand events: walk it with a cursor and cut the rest off
          // once, rather than copying the remainder after every event.
          let start = 0;
          let end;
          while ((end = buf.indexOf('\n\n', start)) >= 0) {
            const block = buf.slice(start, end);
            start = end + 2;
            let type = 'message';
            let data = null;
            for (const raw of block.split('\n')) {
              const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
              if (line.startsWith(':')) continue;
              const colon = line.indexOf(':');
              const field = colon < 0 ? line : line.slice(0, colon);
              let val = colon < 0 ? '' : line.slice(colon + 1);
              if (val.startsWith(' ')) val = val.slice(1);
              if (field === 'event') type = val;
              else if (field === 'data') data = data === null ? val : `${data}\n${val}`;
            }
            if (data !== null) onEvent(type, data);
          }
          buf = buf.slice(start);
        }
      } catch (e) {
        if (stop.signal.aborted) return;
        if (!(e instanceof HttpError) && !(e instanceof TypeError) && e.name !== 'AbortError') {
          console.error(e);
        }
      }
      if (stop.signal.aborted) return;
      const delay = Math.min(15000, 500 * 2 ** attempt);
      attempt += 1;
      onDrop(delay);
      await sleep(delay, stop.signal);
    }
  })();
  return () => stop.abort();
}

// ---------------------------------------------------------------------------------------------
// Frame batching: every change marks something dirty; one flush per animation frame applies
// them all. A timer backs the frame up, since hidden tabs get no frames.

let frameId = 0;
let timerId = 0;
const frameWork = new Set();

function schedule(work) {
  frameWork.add(work);
  if (frameId) return;
  frameId = requestAnimationFrame(runFrame);
  timerId = setTimeout(runFrame, 250);
}

let flushes = 0;
function runFrame() {
  cancelAnimationFrame(frameId);
  clearTimeout(timerId);
  frameId = 0;
  timerId = 0;
  const t0 = performance.now();
  const work = [...frameWork];
  frameWork.clear();
  for (const w of work) w();
  // One entry per frame that did work, for the browser's performance tools (and the tests);
  // cleared now and then so a dashboard left open for days does not grow.
  performance.measure('provisr:flush', { start: t0, end: performance.now() });
  if (++flushes % 500 === 0) performance.clearMeasures('provisr:flush');
}

// ---------------------------------------------------------------------------------------------
// Formatting.

function duration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

function bytes(n) {
  if (n == null) return '?';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function clock(ms) {
  const d = new Date(ms);
  const p = (n, w = 2) => String(n).padStart(w, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (k === 'class') e.className = v;
      else if (k === 'data') Object.assign(e.dataset, v);
      else if (k === 'text') e.textContent = v;
      else e.setAttribute(k, v);
    }
  }
  for (const c of children) e.append(c);
  return e;
}

function banner(text) {
  $('banner-text').textContent = text;
  $('banner').hidden = false;
}

// ---------------------------------------------------------------------------------------------
// The instance table.

const tbody = $('rows');
const rows = new Map(); // instance name -> Row
const counts = Object.fromEntries(STATES.map((s) => [s, 0]));
let groupsOf = new Map(); // program -> [group names]
let groupMembers = new Map(); // group -> Set of programs
let filterText = '';
let stateFilter = null;
let sortKey = 'name';
let sortDir = 1;
let orderDirty = true;
let eventSeq = 0; // bumped per transition; a status read older than a row's last event is stale

// One row template, cloned per instance: cheaper than building each row from scratch.
const rowTemplate = (() => {
  const act = (a) => el('button', { type: 'button', data: { act: a }, text: a });
  return el('tr', null,
    el('td', { class: 'name' }, el('button', { type: 'button', data: { act: 'logs' }, title: 'follow its output' })),
    el('td', null, el('span', { class: 'state' })),
    el('td', { class: 'num' }),
    el('td', { class: 'num' }),
    el('td', { class: 'num' }),
    el('td'),
    el('td', { class: 'num' }),
    el('td'),
    el('td', { class: 'msg' }),
    el('td', { class: 'actions' }, act('start'), ' ', act('stop'), ' ', act('restart')));
})();

class Row {
  constructor(status) {
    this.data = status;
    this.seq = 0; // eventSeq of the last transition applied
    this.tr = rowTemplate.cloneNode(true);
    this.tr.dataset.name = status.name;
    const td = this.tr.children;
    this.nameButton = td[0].firstChild;
    this.nameButton.textContent = status.name;
    this.stateEl = td[1].firstChild;
    this.pidEl = td[2];
    this.uptimeEl = td[3];
    this.restartsEl = td[4];
    this.healthyEl = td[5];
    this.priorityEl = td[6];
    this.groupEl = td[7];
    this.msgEl = td[8];
    const buttons = td[9].querySelectorAll('button');
    this.startButton = buttons[0];
    this.stopButton = buttons[1];
    this.shown = {};
    this.visible = true;
    this.busy = false;
    counts[status.state] += 1;
  }

  get group() {
    return (groupsOf.get(this.data.program) || []).join(', ');
  }

  uptimeSeconds() {
    const d = this.data;
    if (d.state !== 'running' || !d.started_at) return null;
    return (Date.now() + clockSkew - Date.parse(d.started_at)) / 1000;
  }

  setState(next) {
    const prev = this.data.state;
    if (prev === next) return;
    counts[prev] -= 1;
    counts[next] += 1;
    this.data.state = next;
    this.data.running = next === 'running';
  }

  /**
   * Writes what changed into the DOM; returns whether a sortable value changed. `flash` marks
   * a new state for a moment (off in bursts: a thousand animations at once would cost frames).
   */
  render(flash) {
    const d = this.data;
    const s = this.shown;
    let moved = false;
    const set = (key, value, write) => {
      if (s[key] === value) return;
      s[key] = value;
      write(value);
      if (key === sortKey || (sortKey === 'uptime' && key === 'started')) moved = true;
    };
    set('state', d.state, (v) => {
      this.stateEl.textContent = v;
      this.stateEl.className = `state ${v}`;
      this.tr.classList.remove('changed');
      // Restart the flash: reading a layout property would force a synchronous layout per row,
      // so the class comes back on the next frame instead.
      if (s.seen && flash) requestAnimationFrame(() => this.tr.classList.add('changed'));
      s.seen = true;
    });
    set('pid', d.pid ?? (DOWN.has(d.state) || d.state === 'backoff' ? '' : '…'), (v) => { this.pidEl.textContent = v; });
    set('started', d.state === 'running' ? d.started_at : null, () => this.tick());
    set('restarts', d.restarts, (v) => { this.restartsEl.textContent = v; });
    set('healthy', d.state === 'running' ? d.healthy : null, (v) => {
      this.healthyEl.textContent = v === null ? '–' : v ? 'yes' : 'no';
      this.healthyEl.className = v === null ? 'muted' : v ? 'healthy-yes' : 'healthy-no';
    });
    set('priority', d.priority, (v) => { this.priorityEl.textContent = v; });
    set('group', this.group, (v) => { this.groupEl.textContent = v; });
    set('message', d.message || '', (v) => {
      this.msgEl.textContent = v;
      this.msgEl.title = v;
    });
    const busy = this.busy;
    set('buttons', `${d.state}/${busy}`, () => {
      this.startButton.disabled = busy || d.state === 'running' || d.state === 'starting';
      this.stopButton.disabled = busy || DOWN.has(d.state);
    });
    this.applyFilter();
    return moved;
  }

  /** The uptime cell, also refreshed once a second. */
  tick() {
    const up = this.uptimeSeconds();
    const text = up === null ? '' : duration(up);
    if (this.shown.uptime !== text) {
      this.shown.uptime = text;
      this.uptimeEl.textContent = text;
    }
  }

  matches() {
    if (stateFilter && this.data.state !== stateFilter) return false;
    if (!filterText) return true;
    const d = this.data;
    return `${d.name} ${d.program} ${this.group} ${d.state} ${d.message || ''}`.toLowerCase().includes(filterText);
  }

  applyFilter() {
    const show = this.matches();
    if (show !== this.visible) {
      this.visible = show;
      this.tr.hidden = !show;
    }
  }

  remove() {
    counts[this.data.state] -= 1;
    this.tr.remove();
  }
}

function sortValue(row) {
  const d = row.data;
  switch (sortKey) {
    case 'state': return STATES.indexOf(d.state);
    case 'pid': return d.pid ?? -1;
    case 'uptime': return row.uptimeSeconds() ?? -1;
    case 'restarts': return d.restarts;
    case 'healthy': return d.state === 'running' ? (d.healthy ? 2 : 1) : 0;
    case 'priority': return d.priority;
    case 'group': return row.group;
    case 'message': return d.message || '';
    default: return d.name;
  }
}

function compareRows(a, b) {
  const x = sortValue(a);
  const y = sortValue(b);
  const c = typeof x === 'string' ? collator.compare(x, y) : x - y;
  return (c || collator.compare(a.data.name, b.data.name)) * sortDir;
}

/** Puts the rows in order, moving only those out of place. */
function reorder() {
  const order = [...rows.values()].sort(compareRows);
  let at = tbody.firstChild;
  for (const row of order) {
    if (row.tr === at) at = at.nextSibling;
    else tbody.insertBefore(row.tr, at);
  }
}

const dirtyRows = new Set();
const FLASH_AT_MOST = 50;

function renderRows() {
  let moved = orderDirty;
  const flash = dirtyRows.size <= FLASH_AT_MOST;
  for (const row of dirtyRows) {
    if (row.render(flash)) moved = true;
    if (row.tr.parentNode !== tbody) {
      tbody.append(row.tr);
      moved = true;
    }
  }
  dirtyRows.clear();
  if (moved) reorder();
  orderDirty = false;
  renderFigures();
}

function touch(row) {
  dirtyRows.add(row);
  schedule(renderRows);
}

/** Applies status objects from a read that started at `seq`. */
function applyStatuses(list, seq, complete) {
  const seen = new Set();
  for (const st of list) {
    seen.add(st.name);
    let row = rows.get(st.name);
    if (!row) {
      row = new Row(st);
      rows.set(st.name, row);
      touch(row);
      continue;
    }
    if (row.seq > seq) {
      // A transition arrived after this read started: the read may predate it. Keep what the
      // event said and read this instance again.
      needStatus(st.name);
      continue;
    }
    const state = st.state;
    row.data = { ...st, state: row.data.state };
    row.setState(state);
    touch(row);
  }
  if (complete) {
    for (const [name, row] of rows) {
      if (!seen.has(name) && row.seq <= seq) {
        row.remove();
        rows.delete(name);
        dirtyRows.delete(row);
      }
    }
    $('empty').hidden = rows.size > 0;
    schedule(renderRows);
  }
}

// Re-reads of single instances, coalesced: one request in flight, the names queued meanwhile
// go together in the next one.
const wanted = new Set();
let reading = false;

function needStatus(name) {
  wanted.add(name);
  if (!reading) schedule(readWanted);
}

async function readWanted() {
  if (reading || wanted.size === 0) return;
  reading = true;
  const names = [...wanted];
  wanted.clear();
  const seq = eventSeq;
  try {
    if (names.length > REFRESH_ALL_ABOVE) {
      await readAll();
    } else {
      let list = await request(`/status?name=${encodeURIComponent(names.join(','))}`);
      if (!Array.isArray(list)) list = [list];
      applyStatuses(list, seq, false);
    }
  } catch (e) {
    if (e instanceof HttpError && e.status === 404) {
      // An instance went away (its program was removed or scaled down): read everything.
      await readAll().catch(reportReadError);
    } else {
      reportReadError(e);
    }
  } finally {
    reading = false;
    if (wanted.size) schedule(readWanted);
  }
}

let firstRender = true;

async function readAll() {
  const seq = eventSeq;
  const [list, groups] = await Promise.all([request('/status'), request('/groups')]);
  if (firstRender) performance.mark('provisr:status-received');
  groupsOf = new Map();
  groupMembers = new Map(groups.map((g) => [g.name, new Set(g.members)]));
  for (const g of groups) {
    for (const m of g.members) groupsOf.set(m, [...(groupsOf.get(m) || []), g.name]);
  }
  renderGroups(groups);
  applyStatuses(Array.isArray(list) ? list : [list], seq, true);
  for (const row of rows.values()) dirtyRows.add(row);
  if (firstRender) {
    firstRender = false;
    schedule(() => {
      performance.mark('provisr:rows-built');
      // After the frame that shows the rows has been painted.
      requestAnimationFrame(() => setTimeout(() => performance.mark('provisr:first-render'), 0));
    });
  }
}

function reportReadError(e) {
  if (isAuth(e)) askTokenAfter(e);
  else banner(`Cannot read the daemon's state: ${e.message}`);
}

// Instance and group actions. Their transitions arrive as events, like everyone else's.
async function act(path, busyRows) {
  for (const r of busyRows) { r.busy = true; touch(r); }
  try {
    await request(path, { method: 'POST' });
  } catch (e) {
    if (e instanceof HttpError && e.status === 401) askTokenAfter(e);
    else banner(e.message);
  } finally {
    for (const r of busyRows) { r.busy = false; touch(r); }
  }
}

tbody.addEventListener('click', (ev) => {
  const button = ev.target.closest('button[data-act]');
  if (!button) return;
  const name = button.closest('tr').dataset.name;
  const row = rows.get(name);
  const what = button.dataset.act;
  if (what === 'logs') {
    openLogs(name);
    return;
  }
  act(`/${what}?name=${encodeURIComponent(name)}&wait=0s`, row ? [row] : []);
});

function renderGroups(groups) {
  const box = $('groups');
  box.replaceChildren(...groups.map((g) => {
    const button = (a, path) => el('button', { type: 'button', title: `${a} every member of ${g.name}`, data: { path } }, a);
    const q = `group=${encodeURIComponent(g.name)}&wait=0s`;
    return el('span', { class: 'group', data: { group: g.name }, title: g.members.join(', ') },
      el('b', { text: g.name }),
      button('start', `/group/start?${q}`),
      button('stop', `/group/stop?${q}`),
      button('restart', `/restart?${q}`));
  }));
}

$('groups').addEventListener('click', (ev) => {
  const button = ev.target.closest('button[data-path]');
  if (!button) return;
  const members = groupMembers.get(button.closest('.group').dataset.group) || new Set();
  act(button.dataset.path, [...rows.values()].filter((r) => members.has(r.data.program)));
});

// Sorting and filtering.
document.querySelector('#instances thead').addEventListener('click', (ev) => {
  const th = ev.target.closest('th[data-key]');
  if (!th) return;
  const key = th.dataset.key;
  sortDir = key === sortKey ? -sortDir : 1;
  sortKey = key;
  for (const h of document.querySelectorAll('#instances th[data-key]')) h.removeAttribute('aria-sort');
  th.setAttribute('aria-sort', sortDir > 0 ? 'ascending' : 'descending');
  orderDirty = true;
  schedule(renderRows);
});

function refilter() {
  for (const row of rows.values()) row.applyFilter();
  renderFigures();
}

$('filter').addEventListener('input', (ev) => {
  filterText = ev.target.value.trim().toLowerCase();
  schedule(refilter);
});

document.addEventListener('keydown', (ev) => {
  if (ev.key === '/' && !ev.target.closest('input, select, dialog')) {
    ev.preventDefault();
    $('filter').focus();
  }
});

// ---------------------------------------------------------------------------------------------
// Figures: instances by state (from the rows, the same statuses /metrics renders), restarts per
// minute (GET /stats' per-second counts of the last minute, then the live events), the daemon.

const chips = new Map();
$('states').replaceChildren(...STATES.map((s) => {
  const chip = el('button', { type: 'button', class: 'chip', 'aria-pressed': 'false', data: { state: s }, title: `show only ${s} instances` },
    el('span', { class: `dot ${s}` }), s, el('b', { text: '0' }));
  chips.set(s, chip);
  return chip;
}));
$('states').addEventListener('click', (ev) => {
  const chip = ev.target.closest('.chip');
  if (!chip) return;
  stateFilter = stateFilter === chip.dataset.state ? null : chip.dataset.state;
  for (const [s, c] of chips) c.setAttribute('aria-pressed', String(s === stateFilter));
  schedule(refilter);
});

const restartsAt = new Map(); // daemon epoch second -> restarts
// Times (daemon ms) of the restarts seen live in the last minute: a /stats answer taken before
// some of them arrived must not lose them.
let liveRestarts = [];
let clockSkew = 0; // daemon clock minus ours, ms
const sparkBars = Array.from({ length: 60 }, () => el('i'));
$('spark').replaceChildren(...sparkBars);

function renderFigures() {
  for (const [s, chip] of chips) {
    const b = chip.lastChild;
    const n = String(counts[s]);
    if (b.textContent !== n) b.textContent = n;
    chip.classList.toggle('zero', counts[s] === 0);
  }
  let visible = 0;
  for (const row of rows.values()) if (row.visible) visible += 1;
  $('count').textContent = visible === rows.size ? `${rows.size} instances` : `${visible} of ${rows.size} instances`;
  renderRestarts();
}

function renderRestarts() {
  const now = Math.floor((Date.now() + clockSkew) / 1000);
  let total = 0;
  let max = 1;
  const last = [];
  for (let s = now - 59; s <= now; s += 1) {
    const n = restartsAt.get(s) || 0;
    total += n;
    max = Math.max(max, n);
    last.push(n);
  }
  for (const s of restartsAt.keys()) if (s < now - 59) restartsAt.delete(s);
  liveRestarts = liveRestarts.filter((t) => t >= (now - 59) * 1000);
  $('rpm').textContent = total;
  last.forEach((n, i) => { sparkBars[i].style.height = `${(100 * n) / max}%`; });
}

let statsTimer = 0;
let statsAt = 0;
let daemon = null; // the daemon's own figures from the last GET /stats

async function readStats() {
  statsAt = Date.now();
  const s = await request('/stats');
  clockSkew = Date.parse(s.time) - Date.now();
  const end = Math.floor(Date.parse(s.time) / 1000);
  const taken = Date.parse(s.time);
  restartsAt.clear();
  s.restarts.per_second.forEach((n, i) => { if (n) restartsAt.set(end - 59 + i, n); });
  for (const t of liveRestarts) {
    if (t > taken) restartsAt.set(Math.floor(t / 1000), (restartsAt.get(Math.floor(t / 1000)) || 0) + 1);
  }
  daemon = s.daemon;
  daemon.started = Date.parse(s.daemon.started_at);
  renderDaemon();
  renderRestarts();
}

function renderDaemon() {
  if (!daemon) return;
  const d = daemon;
  const up = (Date.now() + clockSkew - d.started) / 1000;
  const cpu = d.cpu_seconds == null ? '?' : `${d.cpu_seconds.toFixed(1)} s`;
  const text = `daemon up ${duration(up)} · cpu ${cpu} · rss ${bytes(d.resident_memory_bytes)} · ${d.reconcile_passes} passes`;
  if ($('daemon').textContent !== text) $('daemon').textContent = text;
}

/** Reads /stats again after events, at most every 5 s. */
function statsSoon() {
  if (statsTimer) return;
  statsTimer = setTimeout(() => {
    statsTimer = 0;
    readStats().catch(() => {});
  }, Math.max(0, 5000 - (Date.now() - statsAt)));
}

// ---------------------------------------------------------------------------------------------
// Live transitions.

const activity = $('activity');
let activityPending = [];
let transitionsSeen = 0;

function onTransition(ev) {
  transitionsSeen += 1;
  eventSeq += 1;
  const row = rows.get(ev.name);
  if (row) {
    row.seq = eventSeq;
    row.setState(ev.to);
    const d = row.data;
    if (ev.restart) d.restarts += 1;
    if (ev.healthy != null) d.healthy = ev.healthy;
    if (ev.spawn) {
      d.pid = null;
      d.started_at = ev.time;
    }
    if (DOWN.has(ev.to) || ev.to === 'backoff') {
      d.pid = null;
      d.stopped_at = ev.time;
    }
    d.message = ev.reason;
    touch(row);
  }
  if (ev.restart) {
    const s = Math.floor(Date.parse(ev.time) / 1000);
    restartsAt.set(s, (restartsAt.get(s) || 0) + 1);
    liveRestarts.push(Date.parse(ev.time));
  }
  // Events carry no pid, uptime or retry time: read the instance once things settle.
  needStatus(ev.name);
  activityPending.push(ev);
  schedule(renderActivity);
  statsSoon();
}

function renderActivity() {
  const fresh = activityPending.slice(-ACTIVITY_KEPT);
  activityPending = [];
  const items = fresh.reverse().map((ev) => {
    const what = ev.healthy === false ? 'unhealthy' : ev.healthy === true ? 'healthy' : null;
    return el('li', { title: ev.reason },
      el('time', { text: clock(Date.parse(ev.time)) }),
      `${ev.name} ${ev.from} → `,
      el('span', { class: `to ${ev.to}`, text: what || ev.to }),
      ev.reason ? ` · ${ev.reason}` : '');
  });
  activity.prepend(...items);
  while (activity.childElementCount > ACTIVITY_KEPT) activity.lastChild.remove();
  $('activity-count').textContent = `${transitionsSeen} seen`;
}

function setConn(state, text) {
  const c = $('conn');
  c.dataset.state = state;
  c.textContent = text;
}

let retryTicker = 0;
function showRetry(delay) {
  clearInterval(retryTicker);
  const until = Date.now() + delay;
  const show = () => {
    const left = Math.max(0, Math.ceil((until - Date.now()) / 1000));
    setConn('retrying', `disconnected · retrying in ${left} s`);
    if (left === 0) clearInterval(retryTicker);
  };
  show();
  retryTicker = setInterval(show, 1000);
}

follow('/events', {
  onOpen() {
    clearInterval(retryTicker);
    setConn('live', 'live');
    $('banner').hidden = true;
    // Subscribed first, read second: nothing that happens in between is lost.
    readAll().catch(reportReadError);
    readStats().catch(() => {});
  },
  onEvent(type, data) {
    if (type === 'transition') onTransition(JSON.parse(data));
    else if (type === 'lagged') {
      // This page fell behind the daemon's event buffer: the events are gone, read everything.
      readAll().catch(reportReadError);
    }
  },
  onDrop: showRetry,
  onRefused(e) {
    setConn('refused', 'refused');
    askToken(e.message);
  },
});

// Uptimes and the restart window move with the clock.
setInterval(() => {
  for (const row of rows.values()) if (row.data.state === 'running') row.tick();
  renderRestarts();
  renderDaemon();
}, 1000);

// ---------------------------------------------------------------------------------------------
// Output of one instance: GET /logs?follow=true, with pause and search.

const logBox = $('log-lines');
let stopLogs = null;
let logName = null;
let logPaused = false;
let logHeld = [];
let logPending = [];
let logSearch = '';

function lineNode(text, note) {
  const div = el('div', note ? { class: 'note' } : null);
  paintLine(div, text);
  return div;
}

function paintLine(div, text) {
  div.dataset.text = text;
  const at = logSearch ? text.toLowerCase().indexOf(logSearch) : -1;
  if (at < 0) {
    div.textContent = text;
  } else {
    div.replaceChildren(text.slice(0, at), el('mark', { text: text.slice(at, at + logSearch.length) }), text.slice(at + logSearch.length));
  }
  div.hidden = Boolean(logSearch) && at < 0;
}

function flushLog() {
  if (!logPending.length) return;
  const atBottom = logBox.scrollHeight - logBox.scrollTop - logBox.clientHeight < 4;
  const batch = logPending.slice(-LOG_LINES_KEPT);
  logPending = [];
  logBox.append(...batch.map(([text, note]) => lineNode(text, note)));
  let extra = logBox.childElementCount - LOG_LINES_KEPT;
  while (extra-- > 0) logBox.firstChild.remove();
  if (atBottom) logBox.scrollTop = logBox.scrollHeight;
}

function addLines(lines, note = false) {
  const items = lines.map((l) => [l, note]);
  if (logPaused && !note) {
    logHeld.push(...items);
    if (logHeld.length > LOG_LINES_KEPT) logHeld = logHeld.slice(-LOG_LINES_KEPT);
    logStatus(`paused · ${logHeld.length} new line${logHeld.length === 1 ? '' : 's'} held`);
    return;
  }
  logPending.push(...items);
  schedule(flushLog);
}

function logStatus(text) {
  $('log-status').textContent = text;
}

function openLogs(name) {
  stopLogs?.();
  logName = name;
  logHeld = [];
  logPending = [];
  logBox.replaceChildren();
  for (const tr of tbody.querySelectorAll('tr.selected')) tr.classList.remove('selected');
  rows.get(name)?.tr.classList.add('selected');
  $('log-name').textContent = name;
  $('log-pause').disabled = false;
  const stream = $('log-stream').value;
  logStatus('connecting…');
  const q = `name=${encodeURIComponent(name)}&stream=${stream}&follow=true&tail=200`;
  stopLogs = follow(`/logs?${q}`, {
    onOpen() {
      // The server starts every connection with the last lines: start afresh rather than
      // show them twice after a reconnect.
      logBox.replaceChildren();
      logPending = [];
      logStatus(logPaused ? 'paused' : `following ${stream}`);
      logBox.dataset.following = `${name}/${stream}`;
    },
    onEvent(type, data) {
      if (type === 'skipped') addLines([`[${data} bytes skipped: this page fell behind]`], true);
      else addLines(data.split('\n'));
    },
    onDrop(delay) {
      delete logBox.dataset.following;
      logStatus(`disconnected · retrying in ${Math.round(delay / 1000)} s`);
    },
    onRefused(e) {
      logStatus('refused');
      askToken(e.message);
    },
    onFatal(e) {
      delete logBox.dataset.following;
      logStatus(e.message);
    },
  });
}

$('log-stream').addEventListener('change', () => { if (logName) openLogs(logName); });

$('log-pause').addEventListener('click', () => {
  logPaused = !logPaused;
  $('log-pause').textContent = logPaused ? 'resume' : 'pause';
  $('log-pause').setAttribute('aria-pressed', String(logPaused));
  if (logPaused) {
    logStatus('paused');
  } else {
    logPending.push(...logHeld);
    logHeld = [];
    schedule(flushLog);
    logStatus(`following ${$('log-stream').value}`);
  }
});

$('log-search').addEventListener('input', (ev) => {
  logSearch = ev.target.value.toLowerCase();
  schedule(() => {
    for (const div of logBox.children) paintLine(div, div.dataset.text);
  });
});

// ---------------------------------------------------------------------------------------------
// The pending plan: what a reload of the files would do (POST /reload?dry_run=true), and the
// button that does it (POST /reload).

function json(v) {
  return v === undefined ? '' : JSON.stringify(v);
}

function renderPlan(report, applied) {
  const body = $('plan-body');
  const items = [];
  for (const e of report.errors || []) {
    const where = [e.file, e.line].filter(Boolean).join(':');
    items.push(el('div', { class: 'error' }, `${where}${e.key ? ` ${e.key}` : ''}: ${e.message}${e.hint ? ` — ${e.hint}` : ''}`));
  }
  if (report.failed) items.push(el('div', { class: 'error', text: report.failed }));
  const steps = (report.steps || []).filter((s) => s.action !== 'unchanged');
  const unchanged = (report.steps || []).length - steps.length;
  for (const s of steps) {
    const step = el('div', { class: 'step', data: { instance: s.instance } },
      el('span', { class: `action ${s.action}`, text: s.action }),
      el('b', { text: s.instance }),
      s.deferred ? ' (after an earlier priority level)' : '',
      s.reason ? ` · ${s.reason}` : '');
    if (s.changes?.length) {
      step.append(el('table', null, el('tbody', null, ...s.changes.map((c) => el('tr', null,
        el('td', { text: c.field }),
        el('td', { class: 'old', text: json(c.old) }),
        el('td', { class: 'new', text: json(c.new) }),
        el('td', { class: 'muted', text: c.effect.replace('_', ' ') }))))));
    }
    items.push(step);
  }
  body.replaceChildren(...items);
  const word = applied ? 'applied' : 'pending';
  $('plan-status').textContent = steps.length
    ? `${steps.length} change${steps.length === 1 ? '' : 's'} ${word}, ${unchanged} unchanged`
    : `nothing ${word}: the files match what runs (${unchanged} unchanged)`;
  $('plan-apply').disabled = applied || steps.length === 0;
}

async function checkPlan() {
  $('plan-status').textContent = 'checking…';
  try {
    renderPlan(await request('/reload?dry_run=true', { method: 'POST' }), false);
  } catch (e) {
    $('plan-status').textContent = e.message;
    if (e instanceof HttpError && e.status === 401) askTokenAfter(e);
  }
}

$('plan-check').addEventListener('click', checkPlan);
$('plan-apply').addEventListener('click', async () => {
  $('plan-apply').disabled = true;
  $('plan-status').textContent = 'applying…';
  try {
    renderPlan(await request('/reload', { method: 'POST' }), true);
  } catch (e) {
    $('plan-status').textContent = e.message;
    if (e instanceof HttpError && e.status === 401) askTokenAfter(e);
    else banner(e.message);
  }
});

// ---------------------------------------------------------------------------------------------
// The token dialog.

const dialog = $('token-dialog');

/** Asks for a token after a refusal, unless the token it refused has been replaced since. */
function askTokenAfter(e) {
  if (e.sentWith === token) askToken(e.message);
}

function askToken(reason) {
  $('token-reason').textContent = reason || '';
  if (!dialog.open) dialog.showModal();
  $('token-input').focus();
}

function tokenSet(next) {
  token = next;
  $('token-input').value = '';
  $('token-button').textContent = token ? 'token ✓' : 'token';
  if (dialog.open) dialog.close();
  const waiters = tokenWaiters;
  tokenWaiters = [];
  for (const w of waiters) w();
  readAll().catch(reportReadError);
  readStats().catch(() => {});
  checkPlan();
}

$('token-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  tokenSet($('token-input').value.trim() || null);
});
$('token-forget').addEventListener('click', () => tokenSet(null));
$('token-cancel').addEventListener('click', () => dialog.close());
$('token-button').addEventListener('click', () => askToken(''));
$('banner-close').addEventListener('click', () => { $('banner').hidden = true; });

checkPlan();
