#!/usr/bin/env node
// A tiny, real OpenID Provider for the console's sign-in tests: panva's oidc-provider
// (OpenID Certified) on plain http://127.0.0.1, one public client (code flow + PKCE S256),
// a handful of test accounts, RFC 8707 resource indicators that turn the access token
// into an RS256 JWT for the API (aud, iss, sub, exp, roles, clearance, scope),
// consent granted without a screen, and a minimal login page of our own.
//
// Configuration (see README.md): env OIDC_PORT / OIDC_HOST / OIDC_ISSUER /
// OIDC_REDIRECT_URIS / ..., and a JSON document from `--config FILE`, OIDC_CONFIG (a file
// path) or OIDC_CONFIG_JSON (the JSON itself). Prints
// `oidc-provider listening on <issuer>` once it accepts connections.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';

// Signal handlers first: a SIGTERM during the ~1 s of start-up also exits 0.
let server;
function shutdown(sig) {
  process.stdout.write(`oidc-provider: ${sig}, shutting down\n`);
  if (!server?.listening) process.exit(0);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

const { default: Provider, errors, interactionPolicy } = await import('oidc-provider');

// ---------------------------------------------------------------- configuration

const DEFAULT_CONFIG = {
  client: {
    client_id: 'auditflow-console',
    client_name: 'auditflow console',
    redirect_uris: [],
    post_logout_redirect_uris: [],
  },
  // resource indicator (must be an absolute URI, RFC 8707) -> resource server
  resources: {
    'urn:auditflow:api': {
      audience: 'auditflow-api',
      scope: 'pii:read',
    },
  },
  // account id (= the login name = `sub`) -> claims
  accounts: {
    alice: { name: 'Alice Analyst', email: 'alice@example.test', roles: ['analyst'], clearance: 'INTERNAL' },
    bob: { name: 'Bob Auditor', email: 'bob@example.test', roles: ['auditor'], clearance: 'CONFIDENTIAL' },
    pia: { name: 'Pia Privacy', email: 'pia@example.test', roles: ['privacy'], clearance: 'RESTRICTED', scope: 'pii:read' },
    root: { name: 'Root Admin', email: 'root@example.test', roles: ['admin', 'analyst', 'auditor', 'privacy'], clearance: 'RESTRICTED', scope: 'pii:read' },
    nobody: { name: 'No Roles', email: 'nobody@example.test', roles: [], clearance: 'PUBLIC' },
  },
  // seconds
  ttl: {
    AccessToken: 3600,
    IdToken: 3600,
    AuthorizationCode: 60,
    Interaction: 3600,
    Session: 86400,
    Grant: 86400,
    RefreshToken: 86400,
  },
};

// URL.parse() is Node >= 20.18 only.
function parseUrl(u) {
  try { return new URL(u); } catch { return null; }
}

function fail(msg) {
  process.stderr.write(`oidc-provider: ${msg}\n`);
  process.exit(2);
}

function readConfig() {
  const argv = process.argv.slice(2);
  let file = process.env.OIDC_CONFIG || undefined;
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === '--config') file = argv[i += 1];
    else if (argv[i].startsWith('--config=')) file = argv[i].slice('--config='.length);
    else if (argv[i] === '-h' || argv[i] === '--help') {
      process.stdout.write('usage: node provider.mjs [--config FILE]   (see README.md for env vars)\n');
      process.exit(0);
    } else fail(`unknown argument ${JSON.stringify(argv[i])}`);
  }
  let text;
  let from;
  if (process.env.OIDC_CONFIG_JSON) {
    text = process.env.OIDC_CONFIG_JSON;
    from = 'OIDC_CONFIG_JSON';
  } else if (file) {
    try { text = fs.readFileSync(file, 'utf8'); } catch (e) { fail(`cannot read config ${file}: ${e.message}`); }
    from = file;
  }
  let user = {};
  if (text !== undefined) {
    try { user = JSON.parse(text); } catch (e) { fail(`${from}: not JSON: ${e.message}`); }
    if (user === null || typeof user !== 'object' || Array.isArray(user)) fail(`${from}: must be a JSON object`);
  }
  const cfg = {
    client: { ...DEFAULT_CONFIG.client, ...(user.client || {}) },
    resources: user.resources || DEFAULT_CONFIG.resources,
    accounts: user.accounts || DEFAULT_CONFIG.accounts,
    ttl: { ...DEFAULT_CONFIG.ttl, ...(user.ttl || {}) },
  };
  const list = (v) => v.split(/[\s,]+/).filter(Boolean);
  const env = process.env;
  if (env.OIDC_CLIENT_ID) cfg.client.client_id = env.OIDC_CLIENT_ID;
  if (env.OIDC_REDIRECT_URIS) cfg.client.redirect_uris = list(env.OIDC_REDIRECT_URIS);
  if (env.OIDC_POST_LOGOUT_REDIRECT_URIS) cfg.client.post_logout_redirect_uris = list(env.OIDC_POST_LOGOUT_REDIRECT_URIS);
  if (env.OIDC_RESOURCE || env.OIDC_AUDIENCE) {
    // One resource server, named by env (keeps the config's scope for it, if any).
    const [firstId, firstRs] = Object.entries(cfg.resources)[0] || [undefined, {}];
    const id = env.OIDC_RESOURCE || firstId;
    const rs = { ...(firstRs || {}) };
    if (env.OIDC_AUDIENCE) rs.audience = env.OIDC_AUDIENCE;
    cfg.resources = { [id]: rs };
  }
  if (env.OIDC_ACCESS_TOKEN_TTL) cfg.ttl.AccessToken = Number(env.OIDC_ACCESS_TOKEN_TTL);
  if (env.OIDC_ID_TOKEN_TTL) cfg.ttl.IdToken = Number(env.OIDC_ID_TOKEN_TTL);

  if (!Array.isArray(cfg.client.redirect_uris) || cfg.client.redirect_uris.length === 0) {
    fail('no redirect URI for the client: set OIDC_REDIRECT_URIS (space/comma separated) or client.redirect_uris in the config');
  }
  for (const u of [...cfg.client.redirect_uris, ...(cfg.client.post_logout_redirect_uris || [])]) {
    const parsed = parseUrl(u);
    if (!parsed || !['http:', 'https:'].includes(parsed.protocol) || parsed.hash) fail(`redirect URI ${JSON.stringify(u)} must be an absolute http(s) URL without a fragment`);
  }
  for (const [id, rs] of Object.entries(cfg.resources)) {
    if (!parseUrl(id)) fail(`resource indicator ${JSON.stringify(id)} must be an absolute URI (RFC 8707), e.g. urn:auditflow:api; put the bare name in "audience"`);
    if (rs.scope !== undefined && typeof rs.scope !== 'string') fail(`resources.${id}.scope must be a space-separated string`);
  }
  for (const [k, v] of Object.entries(cfg.ttl)) {
    if (!Number.isInteger(v) || v <= 0) fail(`ttl.${k} must be a positive integer (seconds), got ${JSON.stringify(v)}`);
  }
  return cfg;
}

const cfg = readConfig();
const HOST = process.env.OIDC_HOST || '127.0.0.1';
const PORT = Number(process.env.OIDC_PORT || 4444);
if (!Number.isInteger(PORT) || PORT < 0 || PORT > 65535) fail(`OIDC_PORT ${process.env.OIDC_PORT} is not a port`);
const SSO = /^(1|true|yes|on)$/i.test(process.env.OIDC_SSO || '');

// ---------------------------------------------------------------- signing key

function thumbprint(jwk) {
  // RFC 7638 for RSA: the required members in lexicographic order.
  const json = JSON.stringify({ e: jwk.e, kty: jwk.kty, n: jwk.n });
  return crypto.createHash('sha256').update(json).digest('base64url');
}

function newRsaJwk() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: thumbprint(jwk), alg: 'RS256', use: 'sig' };
}

function loadKeys() {
  const file = process.env.OIDC_KEY_FILE;
  if (file && fs.existsSync(file)) {
    const doc = JSON.parse(fs.readFileSync(file, 'utf8'));
    if (!Array.isArray(doc.keys) || doc.keys.length === 0) fail(`${file}: not a private JWKS`);
    return doc;
  }
  const doc = { keys: [newRsaJwk()] };
  if (file) {
    fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
    fs.writeFileSync(file, JSON.stringify(doc), { mode: 0o600 });
  }
  return doc;
}

const jwks = loadKeys();
const publicJwks = {
  keys: jwks.keys.map(({ kty, n, e, kid, alg, use }) => ({ kty, n, e, kid, alg, use })),
};
if (process.env.OIDC_PUBLIC_JWKS_OUT) {
  fs.writeFileSync(process.env.OIDC_PUBLIC_JWKS_OUT, JSON.stringify(publicJwks, null, 2));
}

// ---------------------------------------------------------------- accounts

function accountScopes(id) {
  const a = cfg.accounts[id];
  const s = a?.scope ?? a?.scopes ?? '';
  return new Set(Array.isArray(s) ? s : String(s).split(/\s+/).filter(Boolean));
}

async function findAccount(_ctx, id) {
  const a = Object.hasOwn(cfg.accounts, id) ? cfg.accounts[id] : undefined;
  if (!a) return undefined;
  return {
    accountId: id,
    async claims() {
      return {
        sub: id,
        name: a.name ?? id,
        preferred_username: id,
        ...(a.email ? { email: a.email, email_verified: true } : {}),
        roles: a.roles ?? [],
        ...(a.clearance ? { clearance: a.clearance } : {}),
      };
    },
  };
}

// ---------------------------------------------------------------- provider

const ISSUER = process.env.OIDC_ISSUER || `http://${HOST}:${PORT}`;
const ttlFn = (k) => () => cfg.ttl[k];

const policy = interactionPolicy.base();
if (!SSO) {
  // Ask for the login form on every authorization request, even with a live OP session:
  // a browser test that signs in as another user needs no logout or fresh profile.
  policy.get('login').checks.push(new interactionPolicy.Check(
    'always_login',
    'End-User authentication is required on every request (OIDC_SSO is off)',
    (ctx) => (ctx.oidc.result?.login ? interactionPolicy.Check.NO_NEED_TO_PROMPT : interactionPolicy.Check.REQUEST_PROMPT),
  ));
}

const configuration = {
  clients: [{
    token_endpoint_auth_method: 'none',
    grant_types: ['authorization_code'],
    response_types: ['code'],
    application_type: 'web',
    ...cfg.client,
  }],
  jwks,
  findAccount,
  claims: {
    openid: ['sub', 'roles', 'clearance'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
  },
  scopes: ['openid', 'offline_access', 'profile', 'email'],
  pkce: { required: () => true },
  cookies: {
    // Browsers do not isolate cookies by port: the console on 127.0.0.1:<other port>
    // sees these and the OP sees the console's. Distinct names avoid any clash.
    names: { session: '_op_session', interaction: '_op_interaction', resume: '_op_interaction_resume' },
    // oidc-provider 8 defaults the session cookie to SameSite=None (+ a ".legacy" twin);
    // on plain http Chromium drops SameSite=None cookies that are not Secure, so Lax
    // (v9's default) for both. `Secure` is set only on https requests (ctx.secure).
    long: { httpOnly: true, sameSite: 'lax' },
    short: { httpOnly: true, sameSite: 'lax' },
    // Signed cookies; a fresh secret per start is enough for a test OP.
    keys: [crypto.randomBytes(32).toString('base64url')],
  },
  features: {
    devInteractions: { enabled: false }, // our own login page below
    rpInitiatedLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // No `resource` at the authorization request: no API token (opaque, userinfo only).
      defaultResource: async (_ctx, _client, oneOf) => oneOf,
      // `resource` may be omitted at the token request: the one granted at /auth is used.
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, indicator) => {
        const rs = Object.hasOwn(cfg.resources, indicator) ? cfg.resources[indicator] : undefined;
        if (!rs) throw new errors.InvalidTarget(`unknown resource indicator; known: ${Object.keys(cfg.resources).join(' ')}`);
        return {
          scope: rs.scope ?? '',
          audience: rs.audience ?? indicator,
          accessTokenTTL: rs.accessTokenTTL ?? cfg.ttl.AccessToken,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  // Consent is implied: whatever the client asks for is granted (API scopes only when
  // the account lists them, see accounts.*.scope), so no consent screen ever shows.
  async loadExistingGrant(ctx) {
    const { oidc } = ctx;
    const accountId = oidc.session.accountId;
    if (!accountId) return undefined;
    const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
    let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
    if (!grant || grant.accountId !== accountId) {
      grant = new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId });
    }
    if (oidc.requestParamOIDCScopes?.size) grant.addOIDCScope([...oidc.requestParamOIDCScopes].join(' '));
    if (oidc.requestParamClaims?.size) grant.addOIDCClaims([...oidc.requestParamClaims]);
    const allowed = accountScopes(accountId);
    for (const [indicator, rs] of Object.entries(oidc.resourceServers || {})) {
      const asked = [...(oidc.requestParamScopes || [])].filter((s) => rs.scopes.has(s));
      const ok = asked.filter((s) => allowed.has(s));
      const no = asked.filter((s) => !allowed.has(s));
      if (ok.length) grant.addResourceScope(indicator, ok.join(' '));
      if (no.length) grant.rejectResourceScope(indicator, no.join(' '));
    }
    await grant.save();
    return grant;
  },
  // The roles and clearance of the account ride in the (JWT) access token.
  async extraTokenClaims(_ctx, token) {
    const a = token.accountId && Object.hasOwn(cfg.accounts, token.accountId) ? cfg.accounts[token.accountId] : undefined;
    if (!a) return undefined;
    return { roles: a.roles ?? [], ...(a.clearance ? { clearance: a.clearance } : {}) };
  },
  interactions: {
    policy,
    url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
  },
  clientBasedCORS: (_ctx, origin, client) => client.redirectUris.some((u) => parseUrl(u)?.origin === origin),
  ttl: {
    AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL || cfg.ttl.AccessToken,
    AuthorizationCode: ttlFn('AuthorizationCode'),
    IdToken: ttlFn('IdToken'),
    Interaction: ttlFn('Interaction'),
    Session: ttlFn('Session'),
    Grant: ttlFn('Grant'),
    RefreshToken: ttlFn('RefreshToken'),
    ClientCredentials: ttlFn('AccessToken'),
    DeviceCode: 600,
    BackchannelAuthenticationRequest: 600,
    PreAuthorizedCode: 600,
  },
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = page('Error', `<h1 id="oidc-error">${esc(out.error)}</h1><p id="oidc-error-description">${esc(out.error_description || '')}</p>`);
  },
};

configuration.features.rpInitiatedLogout.logoutSource = async (ctx, form) => {
  ctx.body = page('Sign out', `<h1>Sign out of ${esc(ctx.host)}?</h1>${form}
<button id="logout-yes" type="submit" form="op.logoutForm" name="logout" value="yes">Yes, sign me out</button>
<button id="logout-no" type="submit" form="op.logoutForm">No, stay signed in</button>`);
};
configuration.features.rpInitiatedLogout.postLogoutSuccessSource = async (ctx) => {
  ctx.body = page('Signed out', '<h1 id="signed-out">Signed out</h1>');
};

const provider = new Provider(ISSUER, configuration);
provider.on('server_error', (_ctx, err) => process.stderr.write(`oidc-provider server_error: ${err.stack || err}\n`));
if (process.env.OIDC_LOG) {
  for (const ev of ['authorization.error', 'grant.error', 'end_session.error', 'interaction.started', 'grant.success']) {
    provider.on(ev, (...a) => {
      const err = a.find((x) => x instanceof Error);
      process.stderr.write(`oidc-provider ${ev}${err ? `: ${err.name}: ${err.message} ${err.error_description || ''}` : ''}\n`);
    });
  }
}

// ---------------------------------------------------------------- login page

function esc(s) {
  return String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font-family:sans-serif;max-width:22em;margin:3em auto}label,input,button{display:block;width:100%;margin:.3em 0;box-sizing:border-box}input,button{padding:.5em}.error{color:#b00020}</style>
</head><body>
${body}
</body></html>`;
}

function loginPage(uid, { login = '', error, client }) {
  return page('Sign in', `<h1>Sign in</h1>
<p>to <strong id="client-name">${esc(client)}</strong></p>
${error ? `<p class="error" id="login-error" role="alert">${esc(error)}</p>` : ''}
<form id="login-form" method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
  <label for="login">Username</label>
  <input id="login" name="login" type="text" value="${esc(login)}" autofocus>
  <label for="password">Password</label>
  <input id="password" name="password" type="password">
  <button id="sign-in" type="submit">Sign in</button>
</form>
<p><a id="cancel" href="/interaction/${esc(uid)}/abort">Cancel</a></p>`);
}

function readForm(req, limit = 16 * 1024) {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks = [];
    req.on('data', (c) => {
      size += c.length;
      if (size > limit) { reject(new Error('form too large')); req.destroy(); return; }
      chunks.push(c);
    });
    req.on('end', () => resolve(new URLSearchParams(Buffer.concat(chunks).toString('utf8'))));
    req.on('error', reject);
  });
}

function send(res, status, html) {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
    'x-frame-options': 'DENY',
  });
  res.end(html);
}

async function handleInteraction(req, res, url) {
  const m = url.pathname.match(/^\/interaction\/([A-Za-z0-9_-]+)(\/login|\/abort)?$/);
  if (!m) return send(res, 404, page('Not found', '<h1>Not found</h1>'));
  const [, uid, action] = m;
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (e) {
    return send(res, 400, page('Sign-in expired', `<h1 id="oidc-error">Sign-in session not found</h1><p>${esc(e.message)} &mdash; start again from the application.</p>`));
  }
  if (details.uid !== uid) return send(res, 400, page('Sign-in expired', '<h1 id="oidc-error">Sign-in session mismatch</h1>'));
  const client = details.params.client_id;
  const clientName = cfg.client.client_id === client ? (cfg.client.client_name || client) : client;

  if (!action && req.method === 'GET') {
    if (details.prompt.name !== 'login') {
      // Consent is granted in loadExistingGrant; nothing else is expected here.
      return send(res, 501, page('Unexpected', `<h1 id="oidc-error">Unexpected prompt ${esc(details.prompt.name)}</h1><pre>${esc(JSON.stringify(details.prompt.reasons))}</pre>`));
    }
    return send(res, 200, loginPage(uid, { login: details.params.login_hint || '', client: clientName }));
  }
  if (action === '/login' && req.method === 'POST') {
    const form = await readForm(req);
    const login = (form.get('login') || '').trim();
    const password = form.get('password') || '';
    const account = Object.hasOwn(cfg.accounts, login) ? cfg.accounts[login] : undefined;
    let error;
    if (!account) error = `Unknown user ${JSON.stringify(login)}`;
    else if (typeof account.password === 'string' && account.password !== password) error = 'Wrong password';
    if (error) return send(res, 401, loginPage(uid, { login, error, client: clientName }));
    return provider.interactionFinished(req, res, {
      login: { accountId: login, amr: ['pwd'] },
    }, { mergeWithLastSubmission: false });
  }
  if (action === '/abort' && req.method === 'GET') {
    return provider.interactionFinished(req, res, {
      error: 'access_denied',
      error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
  }
  res.writeHead(405, { allow: action === '/login' ? 'POST' : 'GET' });
  return res.end();
}

// ---------------------------------------------------------------- server

const oidcCallback = provider.callback();
server = http.createServer((req, res) => {
  const url = new URL(req.url, ISSUER);
  if (url.pathname.startsWith('/interaction/')) {
    handleInteraction(req, res, url).catch((e) => {
      process.stderr.write(`oidc-provider interaction error: ${e.stack || e}\n`);
      if (!res.headersSent) send(res, 500, page('Error', `<h1 id="oidc-error">${esc(e.message)}</h1>`));
      else res.end();
    });
    return;
  }
  oidcCallback(req, res);
});
server.keepAliveTimeout = 5000;

server.on('error', (e) => fail(`cannot listen on ${HOST}:${PORT}: ${e.message}`));
server.listen(PORT, HOST, () => {
  const { port } = server.address();
  if (port !== PORT) process.stdout.write(`oidc-provider: note: bound to port ${port} but the issuer is ${ISSUER}\n`);
  process.stdout.write(`oidc-provider: client ${cfg.client.client_id} redirect_uris ${cfg.client.redirect_uris.join(' ')}\n`);
  process.stdout.write(`oidc-provider: resources ${Object.entries(cfg.resources).map(([id, rs]) => `${id} (aud ${rs.audience ?? id})`).join(', ')}; kid ${publicJwks.keys.map((k) => k.kid).join(' ')}; sso ${SSO ? 'on' : 'off'}\n`);
  process.stdout.write(`oidc-provider listening on ${ISSUER}\n`);
});
