"""Signs and verifies JWTs with PyJWT: an implementation nobody here wrote.

  pyjwt_check.py sign PRIVATE_KEY_PEM KID CLAIMS_JSON   -> prints the JWT
  pyjwt_check.py verify ISSUER AUDIENCE TOKEN           -> prints the claims

`verify` does what a relying party such as Entra does: it reads the issuer's
discovery document, checks that it names the issuer, takes the key set from
its `jwks_uri` with PyJWKClient, and verifies signature, issuer, audience
and times. Any failure exits non-zero with PyJWT's own error.
"""

import json
import sys
import urllib.request

import jwt


def sign(key_path, kid, claims):
    with open(key_path, encoding="ascii") as f:
        key = f.read()
    print(jwt.encode(json.loads(claims), key, algorithm="RS256", headers={"kid": kid}))


def verify(issuer, audience, token):
    discovery_url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    with urllib.request.urlopen(discovery_url, timeout=10) as response:
        discovery = json.load(response)
    if discovery["issuer"] != issuer:
        sys.exit(f"discovery names issuer {discovery['issuer']!r}, expected {issuer!r}")
    client = jwt.PyJWKClient(discovery["jwks_uri"], cache_keys=False, timeout=10)
    signing_key = client.get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token,
        signing_key.key,
        algorithms=discovery["id_token_signing_alg_values_supported"],
        audience=audience,
        issuer=issuer,
    )
    print(json.dumps(claims))


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"sign": sign, "verify": verify}[command](*args)
