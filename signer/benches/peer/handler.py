"""The token API as a team might write it in Python on Lambda, for the
comparison in signer/benches/lambda_peer.rs: the same API Gateway event in,
the same JSON answer out, from the same DynamoDB item the broker writes.

Each invocation reads the shared cache item (`token#` + SHA-256 of the
profile's cache key, as `Profile::cache_key` builds it). A miss signs a
fresh client assertion with KMS (RS256, MessageType RAW, as the broker does)
and, with no Entra here, answers 503: the comparison is of the steady state,
where nearly every request is served from the cache.
"""

import base64
import hashlib
import json
import os
import time
import uuid

import boto3

DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
TABLE = os.environ["AWS2AZURE_CACHE_TABLE"]
KEY = os.environ["AWS2AZURE_KMS_KEY"]
ISSUER = os.environ["AWS2AZURE_ISSUER"]
PROFILES = json.loads(os.environ["AWS2AZURE_PROFILES"])

# Built once per sandbox, as Lambda's guidance has it.
dynamodb = boto3.client("dynamodb")
kms = boto3.client("kms")


def cache_key(name, profile):
    authority = profile.get("authority", DEFAULT_AUTHORITY).rstrip("/")
    parts = [name, authority, profile["tenant_id"], profile["client_id"],
             profile["scope"], profile["subject"]]
    return "token#" + hashlib.sha256("|".join(parts).encode()).hexdigest()


def answer(status, body):
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json", "cache-control": "no-store"},
        "body": json.dumps(body),
    }


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_assertion(profile, now):
    header = {"alg": "RS256", "typ": "JWT"}
    claims = {"iss": ISSUER, "sub": profile["subject"], "aud": "api://AzureADTokenExchange",
              "iat": now, "nbf": now - 30, "exp": now + 300, "jti": str(uuid.uuid4())}
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    signed = kms.sign(KeyId=KEY, Message=signing_input.encode(), MessageType="RAW",
                      SigningAlgorithm="RSASSA_PKCS1_V1_5_SHA_256")
    return signing_input + "." + b64(signed["Signature"])


def handler(event, context):
    name = (event.get("pathParameters") or {}).get("profile", "")
    profile = PROFILES.get(name)
    if profile is None:
        return answer(404, {"error": "unknown_profile",
                            "error_description": f"no profile named `{name[:64]}` is configured"})
    query = event.get("queryStringParameters") or {}
    min_validity = int(query.get("min_validity", "0"))
    now = int(time.time())
    item = dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": cache_key(name, profile)}},
                             ConsistentRead=True).get("Item")
    if item and int(item["expires_on"]["N"]) - now > min_validity:
        expires_on = int(item["expires_on"]["N"])
        return answer(200, {
            "access_token": item["access_token"]["S"],
            "expires_in": expires_on - now,
            "expires_on": expires_on,
            "profile": name,
            "scope": profile["scope"],
            "token_type": item.get("token_type", {"S": "Bearer"})["S"],
        })
    sign_assertion(profile, now)
    return answer(503, {"error": "upstream_unavailable",
                        "error_description": "no Entra in this comparison"})
