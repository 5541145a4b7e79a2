// A real OpenID Connect provider (oidc-provider, from the npm registry) on loopback, for
// Countersign's sign-in tests. It is the provider's own code that does discovery, the
// authorisation endpoint, PKCE, the token endpoint and signing; this script only registers
// one client, answers the login step for the test (there is no person to type a password),
// and, when the test asks, spoils the ID token on its way out so that the tests can show
// Countersign refusing it.
//
// Usage: node provider.mjs CLIENT_ID CLIENT_SECRET REDIRECT_URI[,REDIRECT_URI...]
// Prints `ready <issuer>` once it listens on a free loopback port.
//
// The test's controls (this test server's own, on loopback):
//   POST /test/account?sub=...&email=...   who the next sign-in completes as
//   POST /test/tamper?mode=...             none | wrong_audience | expired | bad_signature

import http from 'node:http';
import Provider from 'oidc-provider';
import * as jose from 'jose';

const [clientId, clientSecret, redirectUri] = process.argv.slice(2);
if (!clientId || !clientSecret || !redirectUri) {
  console.error('usage: node provider.mjs CLIENT_ID CLIENT_SECRET REDIRECT_URI');
  process.exit(2);
}

// The provider's signing key, and a stranger's key for a forged signature.
const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
const signingJwk = { ...(await jose.exportJWK(privateKey)), kid: 'test-key', alg: 'RS256', use: 'sig' };
const stranger = (await jose.generateKeyPair('RS256', { extractable: true })).privateKey;

const accounts = new Map();
let current = { sub: 'alice-cis2-uuid', email: 'alice@nhs.net' };
accounts.set(current.sub, current);
let tamper = 'none';

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: redirectUri.split(','),
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  jwks: { keys: [signingJwk] },
  pkce: { required: () => true },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
  features: { devInteractions: { enabled: false } },
  async findAccount(ctx, sub) {
    const account = accounts.get(sub);
    if (!account) return undefined;
    return { accountId: sub, async claims() { return { sub, email: account.email, email_verified: true, name: account.email }; } };
  },
  // The grant for our own client is given without a consent page (a first-party client).
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid email profile');
    await grant.save();
    return grant;
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  ttl: { IdToken: 3600, AccessToken: 3600, AuthorizationCode: 600, Interaction: 600, Session: 3600, Grant: 3600 },
});

// The test's controls, the login step, and the ID token spoiled on request.
provider.use(async (ctx, next) => {
  if (ctx.method === 'POST' && ctx.path === '/test/account') {
    current = { sub: ctx.query.sub, email: ctx.query.email };
    accounts.set(current.sub, current);
    ctx.body = 'ok';
    return;
  }
  if (ctx.method === 'POST' && ctx.path === '/test/tamper') {
    tamper = ctx.query.mode;
    ctx.body = 'ok';
    return;
  }
  if (ctx.method === 'GET' && ctx.path.startsWith('/interaction/')) {
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    const result = details.prompt.name === 'login' ? { login: { accountId: current.sub } } : {};
    const to = await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: false });
    ctx.redirect(to);
    return;
  }
  await next();
  if (ctx.path === '/token' && ctx.body && ctx.body.id_token && tamper !== 'none') {
    const claims = jose.decodeJwt(ctx.body.id_token);
    const now = Math.floor(Date.now() / 1000);
    let key = privateKey;
    if (tamper === 'wrong_audience') claims.aud = 'another-service';
    if (tamper === 'expired') { claims.iat = now - 7200; claims.exp = now - 3600; }
    if (tamper === 'bad_signature') key = stranger;
    ctx.body = { ...ctx.body, id_token: await new jose.SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid: 'test-key' }).sign(key) };
  }
});

server.on('request', provider.callback());
console.log(`ready ${issuer}`);
