// The starter page: polls /api/status every 2 s and shows either the login form or the
// node's status. Every API call sends the CSRF token, which arrives once in the URL
// fragment of the login link's redirect and lives only in this tab's sessionStorage.
// Text from the daemon is only ever set with textContent.
'use strict';

const CSRF_KEY = 'cyphonic-csrf';
const POLL_MS = 2000;

const $ = (id) => document.getElementById(id);

let csrf = null;
let loginPending = false;
let timer = null;

function takeToken() {
  const fragment = window.location.hash.slice(1);
  if (/^[0-9a-f]{64}$/.test(fragment)) {
    sessionStorage.setItem(CSRF_KEY, fragment);
  }
  if (window.location.hash) {
    history.replaceState(null, '', '/');
  }
  return sessionStorage.getItem(CSRF_KEY);
}

function show(view) {
  for (const id of ['no-session', 'login', 'status']) {
    $(id).hidden = id !== view;
  }
}

function notice(text) {
  $('notice').textContent = text || '';
  $('notice').hidden = !text;
}

async function api(method, path, body) {
  const options = { method, headers: { 'X-CSRF-Token': csrf }, credentials: 'same-origin' };
  if (body !== undefined) {
    options.headers['Content-Type'] = 'application/json';
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  let data = {};
  try {
    data = await response.json();
  } catch (e) {
    data = { error: `HTTP ${response.status}` };
  }
  return { status: response.status, data };
}

function noSession() {
  sessionStorage.removeItem(CSRF_KEY);
  csrf = null;
  clearTimeout(timer);
  $('state').hidden = true;
  notice('');
  show('no-session');
}

async function poll() {
  clearTimeout(timer);
  try {
    const { status, data } = await api('GET', '/api/status');
    if (status === 401 || status === 403) {
      noSession();
      return;
    }
    if (status !== 200) {
      notice(`The daemon answered: ${data.error || status}`);
    } else {
      notice('');
      render(data);
    }
  } catch (e) {
    notice('cyphonicd does not answer. Is it running?');
  }
  timer = setTimeout(poll, POLL_MS);
}

function render(data) {
  const s = data.status;
  const badge = $('state');
  badge.textContent = s.state.replace(/-/g, ' ');
  badge.className = `badge ${s.state}`;
  badge.hidden = false;
  if (s.state === 'waiting-for-login') {
    if (!loginPending) {
      show('login');
      if (document.activeElement === document.body) {
        $('device-id').focus();
      }
    }
    return;
  }
  show('status');
  renderDevice(s, data.now);
  renderCloud(s.cloud);
  renderPeers(data.peers, data.now);
  renderErrors(data.errors, s.last_reload);
}

function text(id, value) {
  $(id).textContent = value === null || value === undefined || value === '' ? '–' : String(value);
}

function ago(secs) {
  if (secs < 60) return `${secs} s ago`;
  if (secs < 3600) return `${Math.floor(secs / 60)} min ago`;
  return `${Math.floor(secs / 3600)} h ago`;
}

function renderDevice(s, now) {
  text('fqdn', s.fqdn || (s.state === 'starting' ? 'connecting…' : null));
  text('device', s.device_id);
  text('vip4', s.vip4);
  text('vip6', s.vip6);
  text('iface', s.interface);
  if (s.credential_expires) {
    const left = s.credential_expires - now;
    text('credential', left > 0 ? `valid for ${Math.floor(left / 60)} min` : 'expired');
  } else {
    text('credential', null);
  }
}

function renderCloud(cloud) {
  const state = $('cloud-state');
  if (cloud.registered) {
    state.textContent = 'registered';
    state.className = 'ok';
  } else {
    state.textContent = cloud.nms ? 'unreachable' : 'not connected';
    state.className = 'bad';
  }
  text('nms', cloud.nms);
  text('last-contact', cloud.last_contact_secs === null || cloud.last_contact_secs === undefined
    ? null : ago(cloud.last_contact_secs));
  text('observed', cloud.observed);
}

function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u += 1;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}

function renderPeers(peers, now) {
  const body = $('peers').tBodies[0];
  const rows = peers.map((p) => {
    const tr = document.createElement('tr');
    tr.dataset.peer = p.fqdn;
    const cells = [
      p.fqdn,
      p.vip4,
      null,
      p.endpoint,
      p.last_handshake ? ago(Math.max(0, now - p.last_handshake))
        : (p.handshake_in_progress ? 'in progress' : 'never'),
      `${bytes(p.tx_bytes)} (${p.tx_packets})`,
      `${bytes(p.rx_bytes)} (${p.rx_packets})`,
    ];
    for (const value of cells) {
      const td = document.createElement('td');
      if (value === null) {
        const path = document.createElement('span');
        path.className = `path ${p.path}`;
        path.textContent = p.path === 'relayed' && p.relay ? `relayed via ${p.relay}` : p.path;
        td.appendChild(path);
      } else {
        td.textContent = value;
      }
      tr.appendChild(td);
    }
    return tr;
  });
  body.replaceChildren(...rows);
  $('no-peers').hidden = rows.length > 0;
  $('peers').hidden = rows.length === 0;
}

function renderErrors(errors, lastReload) {
  const items = errors.map((e) => {
    const li = document.createElement('li');
    const time = document.createElement('time');
    time.textContent = new Date(e.at * 1000).toLocaleTimeString();
    li.append(time, e.message);
    return li;
  });
  $('errors').replaceChildren(...items);
  $('no-errors').hidden = items.length > 0;
  let reload = '';
  if (lastReload) {
    if (lastReload.error) {
      reload = 'Last configuration reload failed (the running configuration stays).';
    } else if (lastReload.changed.length) {
      reload = `Last configuration reload applied: ${lastReload.applied.join(', ') || 'nothing'}`;
      if (lastReload.refused.length) {
        reload += `; needs a restart: ${lastReload.refused.join(', ')}`;
      }
    }
  }
  $('reload').textContent = reload;
}

async function login(event) {
  event.preventDefault();
  const button = $('login-button');
  const error = $('login-error');
  error.hidden = true;
  button.disabled = true;
  button.textContent = 'Logging in…';
  loginPending = true;
  try {
    const { status, data } = await api('POST', '/api/login', {
      device_id: $('device-id').value,
      password: $('password').value,
    });
    if (status === 401) {
      noSession();
      return;
    }
    if (status !== 200) {
      error.textContent = data.error || `HTTP ${status}`;
      error.hidden = false;
      $('password').select();
      return;
    }
    $('password').value = '';
    notice(data.message || 'Logged in.');
  } catch (e) {
    error.textContent = 'cyphonicd does not answer. Is it running?';
    error.hidden = false;
  } finally {
    loginPending = false;
    button.disabled = false;
    button.textContent = 'Log in';
  }
  poll();
}

async function logout() {
  const button = $('logout');
  button.disabled = true;
  try {
    const { status, data } = await api('POST', '/api/logout');
    if (status === 401) {
      noSession();
      return;
    }
    notice(status === 200 ? 'Logged out.' : `Log-out failed: ${data.error || status}`);
  } catch (e) {
    notice('cyphonicd does not answer. Is it running?');
  } finally {
    button.disabled = false;
  }
  poll();
}

function start() {
  csrf = takeToken();
  $('login-form').addEventListener('submit', login);
  $('logout').addEventListener('click', logout);
  if (!csrf) {
    noSession();
    return;
  }
  poll();
}

start();
