// The ckpt dashboard: polls the JSON API of `ckpt serve` every 2 s.
//
// Routes: `#/` (every job) and `#/jobs/NAME` (one job). Data from the
// server only ever reaches the page as text (textContent, text nodes,
// attribute values), never as HTML.
'use strict';

(() => {
  const POLL_MS = 2000;
  const STALE_SECONDS = 600;
  const RATE_WINDOW_MS = 60000;
  const TOKEN_KEY = 'ckpt.token';
  const STATE_SHOWN = 20000;

  const $ = (id) => document.getElementById(id);

  let info = null;
  let timer = null;
  let generation = 0;
  let current = null; // the job shown on the job page
  const samples = new Map(); // job name -> [{t, done}]

  // ----- DOM helpers -----

  // el('td', {class: 'num', title: 't'}, 'text', child...): children that are
  // strings become text nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null) continue;
      if (key === 'class') node.className = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children) {
      if (child !== undefined && child !== null) node.append(child);
    }
    return node;
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  // ----- formatting -----

  // A failure's output as text: control characters other than newline
  // and tab shown escaped, as the CLI shows them (it is set as a text
  // node, never as HTML).
  // User data as the CLI shows it (`shown`): control characters and the
  // bidirectional controls escaped, so data cannot reorder or hide what is
  // shown beside it. `visible` keeps newlines and tabs (an output's lines);
  // `shown` escapes them too (a key, an error, a name on one line).
  const ESCAPED = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g;
  const ESCAPED_LINE = /[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g;
  const NAMED = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

  function escapeWith(pattern, s) {
    return String(s).replace(pattern,
      (c) => NAMED[c] || `\\u{${c.charCodeAt(0).toString(16)}}`);
  }

  function visible(s) {
    return escapeWith(ESCAPED, s);
  }

  function shown(s) {
    return escapeWith(ESCAPED_LINE, s);
  }

  function fmtInt(n) {
    return Number(n).toLocaleString('en-US');
  }

  function fmtBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  }

  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return '—';
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
    return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
  }

  function fmtRate(perSecond) {
    if (perSecond === null) return '—';
    if (perSecond === 0) return '0/s';
    if (perSecond >= 1) return `${perSecond.toFixed(perSecond >= 100 ? 0 : 1)}/s`;
    return `${(perSecond * 60).toFixed(1)}/min`;
  }

  // Times arrive as RFC 3339 strings (`2026-11-30T10:49:23.123Z`) or null.
  function fmtTime(rfc3339) {
    if (rfc3339 === null || rfc3339 === undefined) return '—';
    const date = new Date(rfc3339);
    return isNaN(date.getTime()) ? rfc3339 : date.toLocaleString();
  }

  function fmtJson(value) {
    return JSON.stringify(value, null, 2);
  }

  // ----- progress, rate and ETA -----

  // Item jobs: completed of all items; cursor jobs: items processed.
  function progressOf(job) {
    const c = job.items;
    const all = c.total;
    if (all > 0) {
      return {
        kind: 'items',
        completed: c.completed,
        total: all,
        done: c.completed + c.dead,
        remaining: c.pending + c.running + c.failed,
      };
    }
    return { kind: 'cursor', done: job.items_processed, total: null, remaining: null };
  }

  function record(job) {
    const now = Date.now();
    const done = progressOf(job).done;
    let list = samples.get(job.job) || [];
    // Work went backwards (a retry, a reset): measure afresh.
    if (list.length && done < list[list.length - 1].done) list = [];
    list.push({ t: now, done });
    while (list.length > 2 && now - list[0].t > RATE_WINDOW_MS) list.shift();
    samples.set(job.job, list);
  }

  // Items per second over the window; null before two polls, or when the
  // job is not running.
  function rateOf(job) {
    if (job.status !== 'running') return null;
    const list = samples.get(job.job) || [];
    if (list.length < 2) return null;
    const first = list[0];
    const last = list[list.length - 1];
    const seconds = (last.t - first.t) / 1000;
    if (seconds < 1) return null;
    return (last.done - first.done) / seconds;
  }

  function etaOf(job) {
    const p = progressOf(job);
    if (p.kind === 'items' && p.remaining === 0) return 'done';
    if (p.kind !== 'items' || job.status !== 'running') return '—';
    const rate = rateOf(job);
    if (!rate || rate <= 0) return '—';
    return fmtDuration(p.remaining / rate);
  }

  function isStale(job) {
    return job.status === 'running' && job.checkpoint_age_seconds !== null &&
      job.checkpoint_age_seconds > STALE_SECONDS;
  }

  // Rounded down, as the CLI does: a job with one item of 200 left is at
  // 99%, not 100%.
  function percentDone(p) {
    return Math.floor((100 * p.completed) / p.total);
  }

  function progressCell(job) {
    const p = progressOf(job);
    const cell = el('td', { class: 'progress' });
    if (p.kind === 'items') {
      const pct = percentDone(p);
      cell.append(
        el('progress', { max: p.total, value: p.completed, title: `${pct}% completed` }),
        el('span', { class: 'progress-text' }, `${fmtInt(p.completed)}/${fmtInt(p.total)}`),
      );
      if (job.items.dead > 0) cell.append(el('span', { class: 'dead-note' }, `${fmtInt(job.items.dead)} dead`));
    } else {
      cell.append(el('span', { class: 'progress-text' }, `${fmtInt(p.done)} processed`));
    }
    if (job.stage) cell.append(el('span', { class: 'muted stage' }, `stage ${shown(job.stage)}`));
    return cell;
  }

  function ageCell(job) {
    if (job.checkpoint_age_seconds === null) return el('td', { class: 'num muted' }, '—');
    if (isStale(job)) {
      return el('td', {
        class: 'num stale-age',
        title: 'Stale: running, and no checkpoint for more than 10 minutes. Is its worker alive?',
      }, `⚠ ${fmtDuration(job.checkpoint_age_seconds)}`);
    }
    return el('td', { class: 'num' }, fmtDuration(job.checkpoint_age_seconds));
  }

  function statusBadge(status) {
    return el('span', { class: `badge status-${status}` }, status);
  }

  function jobHref(name) {
    return `#/jobs/${encodeURIComponent(name)}`;
  }

  // ----- fetching -----

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function getJson(path) {
    const res = await fetch(path, { headers: { Accept: 'application/json' }, cache: 'no-store' });
    const body = await res.json().catch(() => null);
    if (!res.ok) {
      throw new HttpError(res.status, (body && body.error) || `${res.status} ${res.statusText}`);
    }
    return body;
  }

  function setBanner(message) {
    const banner = $('banner');
    banner.textContent = message || '';
    show(banner, Boolean(message));
  }

  function setUpdated() {
    $('updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
  }

  // ----- the jobs page -----

  function renderJobs(jobs) {
    const rows = jobs.map((job) => {
      record(job);
      const row = el('tr', { 'data-job': job.job, class: isStale(job) ? 'stale' : '' },
        el('td', {}, el('a', { href: jobHref(job.job) }, shown(job.job))),
        el('td', {}, statusBadge(job.status)),
        progressCell(job),
        el('td', { class: 'num rate' }, fmtRate(rateOf(job))),
        el('td', { class: 'num eta' }, etaOf(job)),
        ageCell(job),
        el('td', { class: 'num history' }, fmtInt(job.history_len)),
        el('td', { class: 'num state' }, fmtBytes(job.state_bytes)),
      );
      row.addEventListener('click', (event) => {
        if (event.target.closest('a')) return;
        location.hash = jobHref(job.job);
      });
      return row;
    });
    $('jobs').tBodies[0].replaceChildren(...rows);
    show($('no-jobs'), jobs.length === 0);
    show($('jobs'), jobs.length > 0);
  }

  // ----- the job page -----

  function renderJob(job) {
    record(job);
    current = job;
    document.title = `${shown(job.job)} · ckpt`;
    $('job-name').textContent = shown(job.job);
    const status = $('job-status');
    status.textContent = job.status;
    status.className = `badge status-${job.status}`;
    show($('job-missing'), false);
    show($('job-body'), true);

    const p = progressOf(job);
    const bar = $('job-progress');
    if (p.kind === 'items') {
      bar.max = p.total;
      bar.value = p.completed;
      show(bar, true);
      const pct = percentDone(p);
      $('job-progress-text').textContent =
        `${fmtInt(p.completed)}/${fmtInt(p.total)} completed (${pct}%)`;
    } else {
      show(bar, false);
      $('job-progress-text').textContent = `${fmtInt(p.done)} items processed`;
    }
    $('job-rate').textContent = `Rate ${fmtRate(rateOf(job))} · ETA ${etaOf(job)}`;

    $('counts').replaceChildren(...['pending', 'running', 'completed', 'failed', 'dead'].map((s) =>
      el('div', { class: `count count-${s}${job.items[s] > 0 ? ' nonzero' : ''}` },
        el('span', { class: 'count-value', id: `count-${s}` }, fmtInt(job.items[s])),
        el('span', { class: 'count-label' }, s === 'failed' ? 'awaiting retry' : s))));

    const facts = [
      ['Stage', job.stage ? shown(job.stage) : '—'],
      ['Last checkpoint', job.checkpoint_at === null ? 'none'
        : `${fmtDuration(job.checkpoint_age_seconds)} ago (${fmtTime(job.checkpoint_at)})`],
      ['Checkpoints saved', fmtInt(job.saves)],
      ['History entries', fmtInt(job.history_len)],
      ['State size', fmtBytes(job.state_bytes)],
      ['Owner', job.owner ? shown(job.owner) : '—'],
      ['Lease expires', fmtTime(job.lease_expires_at)],
      ['Attempts', fmtInt(job.attempts)],
      ['Created', fmtTime(job.created_at)],
      ['Updated', fmtTime(job.updated_at)],
      ['Completed', fmtTime(job.completed_at)],
    ];
    if (job.error) facts.push(['Error', job.error]);
    $('job-facts').replaceChildren(...facts.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
    if (isStale(job)) {
      $('job-facts').append(el('dt', {}, 'Warning'),
        el('dd', { class: 'stale-age' }, 'Stale: running, and no checkpoint for more than 10 minutes.'));
    }

    renderItems('dead-items', 'no-dead', job.dead_items, (item) => fmtTime(item.finished_at));
    renderItems('failed-items', 'no-failed', job.failed_items, (item) => fmtTime(item.retry_at));
    if (job.items.dead > job.dead_items.length) {
      $('no-dead').textContent = `… and ${fmtInt(job.items.dead - job.dead_items.length)} more dead items.`;
      show($('no-dead'), true);
    } else {
      $('no-dead').textContent = 'No dead items.';
    }
    if (job.items.failed > job.failed_items.length) {
      $('no-failed').textContent = `… and ${fmtInt(job.items.failed - job.failed_items.length)} more items awaiting a retry.`;
      show($('no-failed'), true);
    } else {
      $('no-failed').textContent = 'No items awaiting a retry.';
    }
    updateButtons();

    renderCommands(job);

    const cp = $('checkpoint');
    if (job.checkpoint_at !== null) {
      const state = job.state === null || job.state === undefined ? 'none' : fmtJson(job.state);
      cp.replaceChildren(
        el('h3', {}, 'Cursor'), el('pre', { id: 'cursor' }, visible(fmtJson(job.cursor))),
        el('h3', {}, 'State'),
        el('pre', { id: 'state' }, state.length > STATE_SHOWN
          ? `${state.slice(0, STATE_SHOWN)}\n… (${fmtBytes(job.state_bytes)} in all)` : state));
    } else {
      cp.replaceChildren(el('p', { class: 'muted' }, 'No checkpoint saved.'));
    }

    $('history').tBodies[0].replaceChildren(...job.history.map((h) => el('tr', {},
      el('td', { class: 'num' }, fmtInt(h.seq)),
      el('td', {}, fmtTime(h.saved_at)),
      el('td', { class: 'num' }, fmtInt(h.items_processed)),
      el('td', {}, el('code', {}, visible(JSON.stringify(h.cursor)))))));
    show($('history'), job.history.length > 0);
    show($('no-history'), job.history.length === 0);
  }

  // The commands the job was run with (`ckpt show`'s), the latest marked.
  function renderCommands(job) {
    const commands = job.commands || [];
    $('commands').tBodies[0].replaceChildren(...commands.map((c) =>
      el('tr', { 'data-command': String(c.command_id) },
        el('td', { class: 'num' }, fmtInt(c.command_id)),
        el('td', {}, el('code', {}, shown(c.command)),
          c.latest ? el('span', { class: 'badge latest' }, 'latest') : null),
        el('td', { class: 'num completed' }, fmtInt(c.completed)),
        el('td', { class: 'first-used' }, fmtTime(c.first_used_at)),
        el('td', { class: 'last-used' }, fmtTime(c.last_used_at)))));
    show($('commands'), commands.length > 0);
    show($('no-commands'), commands.length === 0);
    const unknown = job.completed_by_unknown_command || 0;
    $('commands-unknown').textContent =
      `${fmtInt(unknown)} completed item(s) with no command recorded.`;
    show($('commands-unknown'), unknown > 0);
  }

  function renderItems(tableId, emptyId, items, when) {
    $(tableId).tBodies[0].replaceChildren(...items.map((item) => el('tr', { 'data-key': item.key },
      el('td', {}, el('code', {}, shown(item.key))),
      el('td', { class: 'num' }, fmtInt(item.attempts)),
      el('td', {}, el('div', { class: 'error-text' }, item.last_error ? shown(item.last_error) : '—'),
        item.last_output ? el('pre', { class: 'output-text', title: 'the end of its stderr' },
          visible(item.last_output)) : null),
      el('td', {}, when(item)))));
    show($(tableId), items.length > 0);
    show($(emptyId), items.length === 0);
  }

  function renderMissing(name, message) {
    current = null;
    $('job-name').textContent = shown(name);
    $('job-status').textContent = '';
    $('job-status').className = 'badge';
    $('job-missing').textContent = message;
    show($('job-missing'), true);
    show($('job-body'), false);
  }

  function updateButtons() {
    const enabled = info !== null && info.mutations;
    const dead = $('retry-dead');
    const failed = $('retry-failed');
    const busy = dead.dataset.busy === '1';
    dead.disabled = busy || !enabled || !current || current.items.dead === 0;
    failed.disabled = busy || !enabled || !current || current.items.failed === 0;
    dead.textContent = current && current.items.dead > 0
      ? `Retry ${fmtInt(current.items.dead)} dead item${current.items.dead === 1 ? '' : 's'}`
      : 'Retry dead items';
    const why = enabled ? '' : 'Read-only: start ckpt serve with --token to enable retry.';
    dead.title = why;
    failed.title = why;
    $('token').disabled = !enabled;
  }

  function setMessage(text, kind) {
    const message = $('action-message');
    message.textContent = text;
    message.className = `message ${kind}`;
    show(message, Boolean(text));
  }

  async function retry(status) {
    if (!current) return;
    const name = current.job;
    const token = $('token').value.trim();
    const headers = { 'Content-Type': 'application/json', Accept: 'application/json' };
    if (token) headers.Authorization = `Bearer ${token}`;
    $('retry-dead').dataset.busy = '1';
    updateButtons();
    try {
      const res = await fetch(`/api/jobs/${encodeURIComponent(name)}/retry`, {
        method: 'POST', headers, body: JSON.stringify({ status }),
      });
      const body = await res.json().catch(() => null);
      if (!res.ok) {
        const why = (body && body.error) || res.statusText;
        setMessage(`Retry refused (${res.status}): ${why}`, 'error');
      } else {
        const n = body.moved;
        setMessage(`Moved ${fmtInt(n)} ${status} item${n === 1 ? '' : 's'} back to pending.`, 'ok');
      }
    } catch (err) {
      setMessage(`Retry failed: ${err.message}`, 'error');
    } finally {
      delete $('retry-dead').dataset.busy;
      updateButtons();
    }
    refreshNow();
  }

  // ----- routing and polling -----

  function route() {
    const hash = location.hash || '#/';
    const m = hash.match(/^#\/jobs\/(.+)$/);
    if (m) {
      try {
        return { page: 'job', name: decodeURIComponent(m[1]) };
      } catch (_) {
        return { page: 'jobs' };
      }
    }
    return { page: 'jobs' };
  }

  async function poll(gen) {
    if (gen !== generation) return;
    const r = route();
    if (!document.hidden) {
      try {
        if (info === null) await loadInfo();
        if (r.page === 'job') {
          const job = await getJson(`/api/jobs/${encodeURIComponent(r.name)}`);
          if (gen !== generation) return;
          renderJob(job);
        } else {
          const jobs = await getJson('/api/jobs');
          if (gen !== generation) return;
          renderJobs(jobs);
        }
        setBanner('');
        setUpdated();
      } catch (err) {
        if (gen !== generation) return;
        if (r.page === 'job' && err instanceof HttpError && err.status === 404) {
          renderMissing(r.name, `No job named “${shown(r.name)}” (it may have been pruned).`);
          setBanner('');
        } else {
          setBanner(err instanceof HttpError ? `The server answered: ${err.message}`
            : `Cannot reach ckpt serve: ${err.message}`);
        }
      }
    }
    if (gen === generation) timer = setTimeout(() => poll(gen), POLL_MS);
  }

  function refreshNow() {
    clearTimeout(timer);
    generation += 1;
    poll(generation);
  }

  async function loadInfo() {
    info = await getJson('/api/info');
    $('store').textContent = info.store;
    const mode = $('mode');
    mode.textContent = info.mutations ? 'retry enabled' : 'read-only';
    mode.className = `badge ${info.mutations ? 'status-running' : 'status-muted'}`;
    mode.title = info.mutations ? 'Retry needs the token given to ckpt serve.'
      : 'Start ckpt serve with --token to enable retry.';
    show(mode, true);
    updateButtons();
  }

  function onRoute() {
    const r = route();
    show($('jobs-view'), r.page === 'jobs');
    show($('job-view'), r.page === 'job');
    setMessage('', '');
    current = null;
    if (r.page === 'jobs') {
      document.title = 'ckpt';
    } else {
      $('job-name').textContent = shown(r.name);
      updateButtons();
    }
    refreshNow();
  }

  function start() {
    const token = $('token');
    token.value = sessionStorage.getItem(TOKEN_KEY) || '';
    token.addEventListener('input', () => sessionStorage.setItem(TOKEN_KEY, token.value));
    $('retry-dead').addEventListener('click', () => retry('dead'));
    $('retry-failed').addEventListener('click', () => retry('failed'));
    window.addEventListener('hashchange', onRoute);
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden) refreshNow();
    });
    onRoute();
  }

  start();
})();
