// Asks node's @azure/identity for a token the way an unchanged Azure program does.
//
//   IDENTITY_ENDPOINT=... IDENTITY_HEADER=... node tests/identity/sdk_node.mjs [SCOPE]
//
// The SDK finds the endpoint itself, from IDENTITY_ENDPOINT and IDENTITY_HEADER
// (App Service's managed identity protocol); nothing here passes them. The
// credential gets a token twice, the second time from whatever cache serves it.
// One JSON line per call on stdout, with the token's SHA-256 and never the
// token. Any failure exits 1 with the reason on stderr.
import { createHash } from "node:crypto";

const GRAPH = "https://graph.microsoft.com/.default";
const CALLS = 2;

function fail(message) {
  process.stderr.write(`sdk_node: ${message}\n`);
  process.exit(1);
}

const missing = ["IDENTITY_ENDPOINT", "IDENTITY_HEADER"].filter((name) => !process.env[name]);
if (missing.length > 0) {
  fail(
    `${missing.join(" and ")} not set: export the two lines \`aws2azure serve\` ` +
      `(or \`aws2azure dev\`) prints, then run it`,
  );
}
// With a thumbprint the SDK speaks Service Fabric's protocol instead; with a
// federated token file it exchanges that file at Entra itself (AKS).
for (const name of ["IDENTITY_SERVER_THUMBPRINT", "AZURE_FEDERATED_TOKEN_FILE"]) {
  if (process.env[name]) fail(`${name} is set, so the SDK would not ask the endpoint: unset it`);
}

let ManagedIdentityCredential;
try {
  ({ ManagedIdentityCredential } = await import("@azure/identity"));
} catch (error) {
  fail(`@azure/identity does not load (${error.message}): run npm ci`);
}

const scope = process.argv[2] ?? GRAPH;
const kind = "ManagedIdentityCredential";
const credential = new ManagedIdentityCredential();
for (let call = 1; call <= CALLS; call++) {
  let token;
  try {
    token = await credential.getToken(scope);
  } catch (error) {
    const cause = error.cause ? ` (cause: ${error.cause.message ?? error.cause})` : "";
    fail(`${kind} getToken(${scope}) call ${call} failed: ${error.name}: ${error.message}${cause}`);
  }
  if (!token?.token) fail(`${kind} getToken(${scope}) call ${call} returned no token`);
  console.log(
    JSON.stringify({
      sdk: "node",
      credential: kind,
      call,
      token_sha256: createHash("sha256").update(token.token).digest("hex"),
      expires_on: Math.floor(token.expiresOnTimestamp / 1000),
    }),
  );
}
