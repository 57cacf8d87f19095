// Verifies a JWT with node `jose` (createRemoteJWKSet + jwtVerify), an
// implementation nobody here wrote, the way a relying party does: discovery
// document first, then the key set at its jwks_uri.
//
//   node tests/edge/jose_check.mjs ISSUER AUDIENCE TOKEN   -> prints the claims
import { createRemoteJWKSet, jwtVerify } from "jose";

const [issuer, audience, token] = process.argv.slice(2);
const base = issuer.endsWith("/") ? issuer.slice(0, -1) : issuer;
const response = await fetch(`${base}/.well-known/openid-configuration`);
if (!response.ok) throw new Error(`discovery answered ${response.status}`);
const discovery = await response.json();
if (discovery.issuer !== issuer) {
  throw new Error(`discovery names issuer ${discovery.issuer}, expected ${issuer}`);
}
const keySet = createRemoteJWKSet(new URL(discovery.jwks_uri));
const { payload, protectedHeader } = await jwtVerify(token, keySet, {
  issuer,
  audience,
  algorithms: discovery.id_token_signing_alg_values_supported,
});
console.log(JSON.stringify({ payload, protectedHeader }));
