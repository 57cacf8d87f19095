"""Asks Python's azure-identity for a token the way an unchanged Azure program does.

    IDENTITY_ENDPOINT=... IDENTITY_HEADER=... python tests/identity/sdk_python.py [SCOPE]

The SDK finds the endpoint itself, from IDENTITY_ENDPOINT and IDENTITY_HEADER
(App Service's managed identity protocol); nothing here passes them. Each
credential kind gets a token twice from one credential object, the second time
from whatever cache serves it. One JSON line per call on stdout, with the
token's SHA-256 and never the token. Any failure exits 1 with the reason on
stderr.
"""

import hashlib
import json
import os
import sys

GRAPH = "https://graph.microsoft.com/.default"
CALLS = 2


def fail(message):
    print(f"sdk_python: {message}", file=sys.stderr)
    sys.exit(1)


def check_environment():
    missing = [name for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER") if not os.environ.get(name)]
    if missing:
        fail(
            f"{' and '.join(missing)} not set: export the two lines `aws2azure serve` "
            "(or `aws2azure dev`) prints, then run it"
        )
    # With a thumbprint the SDK speaks Service Fabric's protocol instead.
    if os.environ.get("IDENTITY_SERVER_THUMBPRINT"):
        fail("IDENTITY_SERVER_THUMBPRINT is set, so the SDK would use Service Fabric: unset it")
    # This variable overrides DefaultAzureCredential's choice of sources.
    if os.environ.get("AZURE_TOKEN_CREDENTIALS"):
        fail("AZURE_TOKEN_CREDENTIALS is set and would steer DefaultAzureCredential: unset it")


def credentials():
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    yield "ManagedIdentityCredential", ManagedIdentityCredential()
    # Every other source is excluded so the chain cannot answer from a
    # developer's Azure CLI login, a token cache or the network; the managed
    # identity is still found by the chain's own detection. managed_identity_client_id=None
    # keeps an ambient AZURE_CLIENT_ID from selecting a user-assigned identity.
    yield "DefaultAzureCredential", DefaultAzureCredential(
        exclude_environment_credential=True,
        exclude_workload_identity_credential=True,
        exclude_shared_token_cache_credential=True,
        exclude_visual_studio_code_credential=True,
        exclude_cli_credential=True,
        exclude_powershell_credential=True,
        exclude_developer_cli_credential=True,
        exclude_interactive_browser_credential=True,
        exclude_broker_credential=True,
        managed_identity_client_id=None,
    )


def main():
    scope = sys.argv[1] if len(sys.argv) > 1 else GRAPH
    check_environment()
    try:
        import azure.identity  # noqa: F401
    except ImportError as error:
        fail(f"azure-identity is not installed ({error}): pip install -r requirements-test.txt")
    for kind, credential in credentials():
        with credential:
            for call in range(1, CALLS + 1):
                try:
                    token = credential.get_token(scope)
                except Exception as error:  # the SDK raises several kinds; all are a failure here
                    fail(f"{kind} get_token({scope}) call {call} failed: {type(error).__name__}: {error}")
                if not token.token:
                    fail(f"{kind} get_token({scope}) call {call} returned an empty token")
                print(
                    json.dumps(
                        {
                            "sdk": "python",
                            "credential": kind,
                            "call": call,
                            "token_sha256": hashlib.sha256(token.token.encode()).hexdigest(),
                            "expires_on": int(token.expires_on),
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
