"""A JWT issuer for tests of apps behind RequestAuthentication.

Real tokens, real signatures: the issuer holds an ES256 key, publishes it as an inline
JWKS for a ``RequestAuthentication`` (``jwks: '<issuer.jwks_json()>'``), and signs
tokens; a token signed with another key (``forged``) is what an attacker would send.

Example::

    issuer = TestIssuer("https://issuer.test")
    policy = f'''
    apiVersion: security.istio.io/v1
    kind: RequestAuthentication
    metadata: {{name: jwt, namespace: default}}
    spec:
      jwtRules: [{{issuer: "{issuer.issuer}", jwks: '{issuer.jwks_json()}'}}]
    '''
    headers = {"authorization": f"Bearer {issuer.token(sub='alice')}"}
"""

from __future__ import annotations

import json
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["TestIssuer"]


class TestIssuer:
    """An ES256 signing key with key id ``kid``, its JWKS, and tokens from ``issuer``."""

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, issuer: str = "https://issuer.test", kid: str = "k1") -> None:
        self.issuer = issuer
        self.kid = kid
        self.key = ec.generate_private_key(ec.SECP256R1())

    def jwks_json(self) -> str:
        """The JWKS (one key) as JSON, to inline in a RequestAuthentication."""
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        return json.dumps({"keys": [{**jwk, "kid": self.kid, "alg": "ES256", "use": "sig"}]})

    def token(self, key: ec.EllipticCurvePrivateKey | None = None, **claims: object) -> str:
        """A token from this issuer for ``sub: alice``, valid for ten minutes (override
        any claim, e.g. ``exp=0`` for an expired one), signed with this issuer's key, or
        with ``key`` (another key: a forged token)."""
        now = int(time.time())
        body = {"iss": self.issuer, "sub": "alice", "iat": now, "exp": now + 600, **claims}
        pem = (key or self.key).private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())
        return jwt.encode(body, pem, algorithm="ES256", headers={"kid": self.kid})

    def request_authentication(self, app: str | None = None, *, name: str = "jwt",
                               namespace: str = "default", **rule: str) -> str:
        """A RequestAuthentication YAML document trusting this issuer, for the workloads
        labelled ``app: <app>`` (all of ``namespace`` when None); ``rule`` adds fields to
        the JWT rule (``outputPayloadToHeader="x-jwt-payload"``)."""
        selector = f"\n  selector: {{matchLabels: {{app: {app}}}}}" if app else ""
        extra = "".join(f", {k}: {v}" for k, v in rule.items())
        return (f"apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n"
                f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:{selector}\n"
                f"  jwtRules: [{{issuer: \"{self.issuer}\", "
                f"jwks: '{self.jwks_json()}'{extra}}}]\n")

    def forged(self, **claims: object) -> str:
        """A token that claims this issuer and key id but is signed with another key."""
        return self.token(ec.generate_private_key(ec.SECP256R1()), **claims)
