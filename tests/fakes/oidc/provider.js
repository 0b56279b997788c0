// A real OpenID Provider for the sign-in tests: panva/oidc-provider (OpenID Certified),
// configured entirely by the test through the OIDC_TEST_CONFIG environment variable:
//   {"issuer": "http://127.0.0.1:<port>", "port": <port>,
//    "clients": [{client_id, client_secret, redirect_uris, ...}],
//    "accounts": {"<sub>": {"email": ..., "email_verified": true, "hd": ..., "name": ...}},
//    "jwks": {"keys": [<private JWKs>]}}
// Sign-in goes through the library's own interaction pages (login, then consent).
// Prints "listening <issuer>" once it accepts connections.
import Provider from 'oidc-provider';

const cfg = JSON.parse(process.env.OIDC_TEST_CONFIG);
const accounts = cfg.accounts || {};

const provider = new Provider(cfg.issuer, {
  clients: cfg.clients,
  jwks: cfg.jwks,
  pkce: { required: () => true },
  // The scope's claims go into the ID token (as Google and Entra do), not only /userinfo.
  conformIdTokenClaims: false,
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified', 'hd', 'tid', 'groups'],
    profile: ['name'],
  },
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: true },
  },
  async findAccount(ctx, id) {
    if (!Object.prototype.hasOwnProperty.call(accounts, id)) return undefined;
    return {
      accountId: id,
      async claims() { return { sub: id, ...accounts[id] }; },
    };
  },
});
provider.proxy = false;
const server = provider.listen(cfg.port, '127.0.0.1', () => {
  process.stdout.write(`listening ${cfg.issuer}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
