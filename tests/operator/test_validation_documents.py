"""Istio's documented examples are admitted unchanged; invalid variants are refused with the reason.

The valid documents are the examples of istio.io's reference pages (security: authorization-policy,
peer_authentication, request_authentication; networking: virtual-service, destination-rule). The
invalid ones are those examples with one mistake each, refused as the API server (CRD schema and
CEL rules) or istiod's webhook would refuse them, with the same words.
"""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from wisp_operator.validation import admit
from wisp_operator.validation.errors import BAD_REQUEST, INVALID, NO_MATCH

VALID = {
    "ap allow-read (principals, namespaces, methods, request.auth.claims)": """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin, namespace: foo}
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/curl"]
    - source:
        namespaces: ["dev"]
    to:
    - operation:
        methods: ["GET"]
    when:
    - key: request.auth.claims[iss]
      values: ["https://accounts.google.com"]
""",
    "ap deny with notNamespaces": """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin-deny, namespace: foo}
spec:
  selector:
    matchLabels: {app: httpbin, version: v1}
  action: DENY
  rules:
  - from:
    - source:
        notNamespaces: ["foo"]
""",
    "ap allow-nothing": """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: foo}
spec: {}
""",
    "ap deny-all with an empty rule": """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: foo}
spec:
  action: DENY
  rules:
  - {}
""",
    "ap allow-all": """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: foo}
spec:
  rules:
  - {}
""",
    "ap ports, ipBlocks and destination.port": """
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: tcp-policy, namespace: foo}
spec:
  selector:
    matchLabels: {app: tcp-echo}
  action: ALLOW
  rules:
  - from:
    - source:
        ipBlocks: ["10.244.0.0/16", "192.168.1.1"]
    to:
    - operation:
        ports: ["9000", "9001"]
    when:
    - key: destination.port
      notValues: ["9002"]
""",
    "ap targetRefs to a waypoint Gateway": """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: productpage-viewer, namespace: default}
spec:
  targetRefs:
  - kind: Gateway
    group: gateway.networking.k8s.io
    name: waypoint
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/curl"]
    to:
    - operation:
        methods: ["GET"]
""",
    "ap CUSTOM with a provider": """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: foo}
spec:
  action: CUSTOM
  provider:
    name: my-ext-authz-service
  rules:
  - to:
    - operation:
        paths: ["/admin/*"]
""",
    "pa namespace STRICT": """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec:
  mtls:
    mode: STRICT
""",
    "pa workload with portLevelMtls": """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: finance, namespace: foo}
spec:
  selector:
    matchLabels: {app: finance}
  mtls:
    mode: STRICT
  portLevelMtls:
    8080:
      mode: DISABLE
""",
    "ra jwt with jwksUri": """
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: httpbin, namespace: foo}
spec:
  selector:
    matchLabels: {app: httpbin}
  jwtRules:
  - issuer: "issuer-foo"
    jwksUri: https://example.com/.well-known/jwks.json
    fromHeaders:
    - name: x-jwt-assertion
      prefix: "Bearer "
    outputClaimToHeaders:
    - header: "x-jwt-claim-foo"
      claim: "foo"
""",
    "vs reviews route with match and weights": """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-route, namespace: default}
spec:
  hosts: [reviews.prod.svc.cluster.local]
  http:
  - name: "reviews-v2-routes"
    match:
    - uri:
        prefix: "/wpcatalog"
    - uri:
        prefix: "/consumercatalog"
    rewrite:
      uri: "/newcatalog"
    route:
    - destination:
        host: reviews.prod.svc.cluster.local
        subset: v2
  - name: "reviews-v1-route"
    route:
    - destination:
        host: reviews.prod.svc.cluster.local
        subset: v1
      weight: 25
    - destination:
        host: reviews.prod.svc.cluster.local
        subset: v3
      weight: 75
    timeout: 10s
    retries:
      attempts: 3
      perTryTimeout: 2s
""",
    "dr bookinfo ratings with subsets and traffic policy": """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bookinfo-ratings, namespace: default}
spec:
  host: ratings.prod.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      simple: LEAST_REQUEST
    connectionPool:
      tcp:
        maxConnections: 100
        connectTimeout: 30ms
    outlierDetection:
      consecutive5xxErrors: 7
      interval: 5m
      baseEjectionTime: 15m
  subsets:
  - name: testversion
    labels:
      version: v3
    trafficPolicy:
      loadBalancer:
        simple: ROUND_ROBIN
      portLevelSettings:
      - port:
          number: 80
        loadBalancer:
          simple: LEAST_REQUEST
""",
}

# (document, refusal reason, the words of the refusal)
INVALID_DOCS = {
    "ap lower-case action": ("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: x, namespace: foo}
spec: {action: deny}
""", INVALID, 'The AuthorizationPolicy "x" is invalid: spec.action: Unsupported value: "deny": '
     'supported values: "ALLOW", "DENY", "AUDIT", "CUSTOM"'),
    "ap unknown field principal": ("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: x, namespace: foo}
spec:
  action: DENY
  rules: [{from: [{source: {principal: ["cluster.local/ns/default/sa/curl"]}}]}]
""", BAD_REQUEST, 'strict decoding error: unknown field "spec.rules[0].from[0].source.principal"'),
    "ap selector.matchLabel typo": ("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: x, namespace: foo}
spec: {selector: {matchLabel: {app: web}}}
""", BAD_REQUEST, 'unknown field "spec.selector.matchLabel"'),
    "ap unknown spec.priority": ("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: x, namespace: foo}
spec: {priority: 1}
""", BAD_REQUEST, 'AuthorizationPolicy in version "v1" cannot be handled as a AuthorizationPolicy: '
     'strict decoding error: unknown field "spec.priority"'),
    "ap integer ports": ("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: x, namespace: foo}
spec: {rules: [{to: [{operation: {ports: [8080]}}]}]}
""", INVALID, 'spec.rules[0].to[0].operation.ports[0]: Invalid value: "integer": '
     'spec.rules[0].to[0].operation.ports[0] in body must be of type string: "integer"'),
    "ap selector together with targetRefs": ("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: x, namespace: foo}
spec:
  selector: {matchLabels: {app: web}}
  targetRefs: [{kind: Service, group: "", name: web}]
""", INVALID, 'spec: Invalid value: "object": only one of targetRefs or selector can be set'),
    "ap unknown when key source.port": ("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: x, namespace: foo}
spec:
  action: DENY
  rules: [{when: [{key: source.port, values: ["8080"]}]}]
""", BAD_REQUEST, "invalid policy x.foo: invalid `value` for `key` source.port: unknown attribute: source.port"),
    "ap bad CIDR": ("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: x, namespace: foo}
spec: {rules: [{from: [{source: {ipBlocks: ["10.0.0.0/33"]}}]}]}
""", BAD_REQUEST, "invalid policy x.foo: bad CIDR range (10.0.0.0/33)"),
    "ap port out of range": ("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: x, namespace: foo}
spec: {rules: [{to: [{operation: {ports: ["70000"]}}]}]}
""", BAD_REQUEST, "invalid policy x.foo: bad port (70000)"),
    "ap DENY without rules": ("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: x, namespace: foo}
spec: {action: DENY}
""", BAD_REQUEST, "DENY action without `rules` is meaningless as it will never be triggered"),
    "ap empty from.source": ("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: x, namespace: foo}
spec: {rules: [{from: [{source: {}}]}]}
""", BAD_REQUEST, "`from.source` must not be empty, found at rule 0"),
    "ap serviceAccounts with principals": ("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: x, namespace: foo}
spec: {rules: [{from: [{source: {serviceAccounts: [foo/a], principals: [b]}}]}]}
""", INVALID, "Cannot set serviceAccounts with namespaces or principals"),
    "ap empty principal": ("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: x, namespace: foo}
spec: {rules: [{from: [{source: {principals: [""]}}]}]}
""", BAD_REQUEST, "empty value not allowed, found in Principals"),
    "ap wildcard in selector": ("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: x, namespace: foo}
spec: {selector: {matchLabels: {app: "web*"}}}
""", INVALID, "wildcard not allowed in label value match"),
    "ap provider without CUSTOM": ("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: x, namespace: foo}
spec: {provider: {name: ext}, rules: [{}]}
""", BAD_REQUEST, "`provider` must not be with non CUSTOM action, found ALLOW"),
    "ap targetRef to a Deployment": ("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: x, namespace: foo}
spec: {targetRefs: [{kind: Deployment, group: apps, name: web}]}
""", BAD_REQUEST, "targetRef must be to one of"),
    "ap misspelt kind": ("""
apiVersion: security.istio.io/v1
kind: AuthorizaionPolicy
metadata: {name: x, namespace: foo}
spec: {}
""", NO_MATCH, 'no matches for kind "AuthorizaionPolicy" in version "security.istio.io/v1"'),
    "ap v1alpha1 is not served": ("""
apiVersion: security.istio.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: x, namespace: foo}
spec: {}
""", NO_MATCH, 'no matches for kind "AuthorizationPolicy" in version "security.istio.io/v1alpha1"'),
    "pa mode typo": ("""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec: {mtls: {mode: STRIC}}
""", INVALID, 'The PeerAuthentication "default" is invalid: spec.mtls.mode: Unsupported value: "STRIC": '
     'supported values: "UNSET", "DISABLE", "PERMISSIVE", "STRICT"'),
    "pa portLevelMtls without selector": ("""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec: {mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: DISABLE}}}
""", INVALID, 'spec: Invalid value: "object": portLevelMtls requires selector'),
    "pa port 0": ("""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec: {selector: {matchLabels: {app: a}}, portLevelMtls: {0: {mode: DISABLE}}}
""", INVALID, "port must be between 1-65535"),
    "ra jwksUri scheme": ("""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: x, namespace: foo}
spec: {jwtRules: [{issuer: a, jwksUri: "ftp://example.com/jwks"}]}
""", INVALID, "url must have scheme http:// or https://"),
    "ra jwks and jwksUri both": ("""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: x, namespace: foo}
spec: {jwtRules: [{issuer: a, jwksUri: "https://example.com/jwks", jwks: "{}"}]}
""", INVALID, "only one of jwks or jwksUri can be set"),
    "ra without issuer or jwksUri": ("""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: x, namespace: foo}
spec: {jwtRules: [{fromParams: [token]}]}
""", BAD_REQUEST, "issuer or jwksUri must be non-empty string"),
    "vs timeout below 1ms": ("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: x, namespace: foo}
spec: {hosts: [a], http: [{route: [{destination: {host: a}}], timeout: 0.1ms}]}
""", INVALID, "spec.http[0].timeout: Invalid value: \"string\": must be a valid duration greater than 1ms"),
    "dr without host": ("""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: x, namespace: foo}
spec: {subsets: [{name: v1}]}
""", INVALID, "spec.host: Required value"),
    "dr two load balancers": ("""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: x, namespace: foo}
spec: {host: a, trafficPolicy: {loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}}}
""", INVALID, "spec.trafficPolicy.loadBalancer: Invalid value: \"object\""),
}


@pytest.mark.parametrize("case", sorted(VALID))
def test_documented_example_is_admitted_unchanged(case: str) -> None:
    obj = yaml.safe_load(VALID[case])
    before = copy.deepcopy(obj)
    verdict = admit(obj)
    assert verdict.refusal is None, verdict.refusal.message
    # Unchanged as the API server stores it: JSON, where a YAML key 8080 is the string "8080".
    assert verdict.obj == json.loads(json.dumps(before))
    assert obj == before  # admitting never changes the caller's object


@pytest.mark.parametrize("case", sorted(INVALID_DOCS))
def test_invalid_variant_is_refused_with_the_reason(case: str) -> None:
    text, reason, words = INVALID_DOCS[case]
    verdict = admit(yaml.safe_load(text))
    assert verdict.refusal is not None
    assert verdict.refusal.reason == reason
    assert words in verdict.refusal.message
