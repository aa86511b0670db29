"""Istio's documented examples are admitted unchanged; invalid variants are refused with the reason.

The valid documents are the examples of istio.io's reference pages (security: authorization-policy,
peer_authentication, request_authentication; networking: virtual-service, destination-rule) and of
the Gateway API's guides and GEPs (gateway-api.sigs.k8s.io: simple-gateway, http-routing,
http-redirect-rewrite, http-timeouts (GEP-1742), grpc-routing, the GAMMA mesh guides (GEP-1426),
and Istio's waypoint Gateway). The invalid ones are those examples with one mistake each, refused
as the API server (CRD schema and CEL rules) or istiod's webhook would refuse them, with the same
words.
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
    "gtw istio waypoint (istio-waypoint class, HBONE on 15008)": """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: default
  labels: {istio.io/waypoint-for: service}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
""",
    "gtw simple HTTP gateway (v1beta1)": """
apiVersion: gateway.networking.k8s.io/v1beta1
kind: Gateway
metadata: {name: prod-web, namespace: default}
spec:
  gatewayClassName: example
  listeners:
  - protocol: HTTP
    port: 80
    name: prod-web-gw
    allowedRoutes:
      namespaces:
        from: Same
""",
    "gtw HTTPS listener with a certificate and infrastructure labels": """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: example-gateway, namespace: default}
spec:
  gatewayClassName: example-gateway-class
  infrastructure:
    labels: {example.com/team: platform}
  listeners:
  - name: https
    protocol: HTTPS
    port: 443
    hostname: foo.example.com
    tls:
      certificateRefs:
      - kind: Secret
        group: ""
        name: foo-example-com-cert
""",
    "httproute GAMMA mesh split on a Service parent": """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: smiley-route, namespace: faces}
spec:
  parentRefs:
  - name: smiley
    kind: Service
    group: ""
    port: 80
  rules:
  - backendRefs:
    - name: smiley
      port: 80
      weight: 50
    - name: smiley2
      port: 80
      weight: 50
""",
    "httproute GAMMA mesh header match and timeouts": """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: bookinfo}
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: reviews
    port: 9080
  rules:
  - matches:
    - headers:
      - name: end-user
        value: jason
    backendRefs:
    - name: reviews-v2
      port: 9080
    timeouts:
      request: 10s
      backendRequest: 2s
  - backendRefs:
    - name: reviews-v1
      port: 9080
""",
    "httproute matches on path, header and query to two Gateway listeners": """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bar-route, namespace: default}
spec:
  parentRefs:
  - name: example-gateway
    namespace: infra
    sectionName: http
  - name: example-gateway
    namespace: infra
    sectionName: https
  hostnames: ["bar.example.com"]
  rules:
  - matches:
    - headers:
      - type: Exact
        name: env
        value: canary
    backendRefs:
    - name: bar-svc-canary
      port: 8080
  - matches:
    - path: {type: Exact, value: /login}
      method: POST
      queryParams:
      - {name: debug, value: "1"}
    backendRefs:
    - name: bar-svc
      port: 8080
""",
    "httproute URLRewrite replacePrefixMatch with one PathPrefix match": """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: http-filter-rewrite, namespace: default}
spec:
  hostnames: [rewrite.example]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /cardamom}
    filters:
    - type: URLRewrite
      urlRewrite:
        hostname: elsewhere.example
        path:
          type: ReplacePrefixMatch
          replacePrefixMatch: /fennel
    backendRefs:
    - name: example-svc
      weight: 1
      port: 80
""",
    "httproute https redirect with request header modifier (v1beta1)": """
apiVersion: gateway.networking.k8s.io/v1beta1
kind: HTTPRoute
metadata: {name: http-filter-redirect, namespace: default}
spec:
  parentRefs:
  - name: redirect-gateway
    sectionName: http
  hostnames: [redirect.example]
  rules:
  - filters:
    - type: RequestRedirect
      requestRedirect:
        scheme: https
        statusCode: 301
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: my-header, value: foo}]
        remove: [x-legacy]
""",
    "grpcroute service/method and header matches": """
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: foo-route, namespace: default}
spec:
  parentRefs:
  - name: example-gateway
  hostnames: ["foo.example.com"]
  rules:
  - matches:
    - method:
        service: com.example.User
        method: Login
    backendRefs:
    - name: foo-svc
      port: 50051
  - matches:
    - headers:
      - type: Exact
        name: magic
        value: foo
      method:
        service: com.Example.Login
        method: Login
    backendRefs:
    - name: foo-svc
      port: 50051
""",
    "grpcroute GAMMA mesh route on a Service parent": """
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo-mesh, namespace: default}
spec:
  parentRefs:
  - {group: "", kind: Service, name: echo, port: 7070}
  rules:
  - backendRefs:
    - {name: echo-v1, port: 7070, weight: 90}
    - {name: echo-v2, port: 7070, weight: 10}
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
    "httproute more than 16 rules": ("""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: x, namespace: foo}
spec:
  rules: [""" + ", ".join(["{backendRefs: [{name: web, port: 80}]}"] * 17) + """]
""", INVALID, 'The HTTPRoute "x" is invalid: spec.rules: Too many: 17: must have at most 16 items'),
    "httproute path match value not starting with /": ("""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: x, namespace: foo}
spec:
  rules: [{matches: [{path: {type: PathPrefix, value: api}}], backendRefs: [{name: web, port: 80}]}]
""", INVALID, 'The HTTPRoute "x" is invalid: spec.rules[0].matches[0].path: Invalid value: "object": '
     "value must be an absolute path and start with '/' when type one of ['Exact', 'PathPrefix']"),
    "httproute path match without type (defaulted PathPrefix) and a relative value": ("""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: x, namespace: foo}
spec:
  rules: [{matches: [{path: {value: api}}]}]
""", INVALID, "value must be an absolute path and start with '/'"),
    "httproute URLRewrite replacePrefixMatch with an Exact match": ("""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: x, namespace: foo}
spec:
  rules:
  - matches: [{path: {type: Exact, value: /cardamom}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /fennel}}
    backendRefs: [{name: web, port: 80}]
""", INVALID, 'spec.rules[0]: Invalid value: "object": When using URLRewrite filter with '
     'path.replacePrefixMatch, exactly one PathPrefix match must be specified'),
    "httproute URLRewrite full-path type with replacePrefixMatch": ("""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: x, namespace: foo}
spec:
  rules:
  - filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /a, replacePrefixMatch: /b}}
""", INVALID, 'spec.rules[0].filters[0].urlRewrite.path: Invalid value: "object": '
     "type must be 'ReplacePrefixMatch' when replacePrefixMatch is set"),
    "httproute redirect together with backendRefs": ("""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: x, namespace: foo}
spec:
  rules:
  - filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]
    backendRefs: [{name: web, port: 80}]
""", INVALID, "RequestRedirect filter must not be used together with backendRefs"),
    "httproute filter type without its config": ("""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: x, namespace: foo}
spec:
  rules: [{filters: [{type: RequestHeaderModifier}]}]
""", INVALID, 'spec.rules[0].filters[0]: Invalid value: "object": filter.requestHeaderModifier must be '
     'specified for RequestHeaderModifier filter.type'),
    "httproute backend timeout longer than the request timeout": ("""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: x, namespace: foo}
spec:
  rules: [{timeouts: {request: 1s, backendRequest: 2s}, backendRefs: [{name: web, port: 80}]}]
""", INVALID, "spec.rules[0].timeouts: Invalid value: \"object\": backendRequest timeout cannot be longer "
     "than request timeout"),
    "httproute Service backendRef without port": ("""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: x, namespace: foo}
spec:
  rules: [{backendRefs: [{name: web}]}]
""", INVALID, 'spec.rules[0].backendRefs[0]: Invalid value: "object": Must have port for Service reference'),
    "httproute same parent twice, one without sectionName": ("""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: x, namespace: foo}
spec:
  parentRefs:
  - {name: example-gateway, namespace: infra}
  - {name: example-gateway, namespace: infra, sectionName: https}
""", INVALID, 'spec.parentRefs: Invalid value: "array": sectionName must be specified when parentRefs '
     'includes 2 or more references to the same parent'),
    "httproute header set twice": ("""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: x, namespace: foo}
spec:
  rules:
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: a, value: "1"}, {name: a, value: "2"}]}
""", INVALID, 'spec.rules[0].filters[0].requestHeaderModifier.set[1]: Duplicate value: '
     'map[string]interface {}{"name":"a"}'),
    "httproute unknown field in a match": ("""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: x, namespace: foo}
spec:
  rules: [{matches: [{path: {type: PathPrefix, value: /}, header: [{name: a, value: b}]}]}]
""", BAD_REQUEST, 'strict decoding error: unknown field "spec.rules[0].matches[0].header"'),
    "gtw listener on port 0": ("""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: foo}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 0, protocol: HBONE}]
""", INVALID, 'The Gateway "waypoint" is invalid: spec.listeners[0].port: Invalid value: 0: '
     'spec.listeners[0].port in body should be greater than or equal to 1'),
    "gtw without listeners": ("""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: foo}
spec: {gatewayClassName: istio-waypoint}
""", INVALID, "spec.listeners: Required value"),
    "gtw two listeners with one name": ("""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: foo}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}, {name: mesh, port: 15009, protocol: HBONE}]
""", INVALID, 'spec.listeners[1]: Duplicate value: map[string]interface {}{"name":"mesh"}'),
    "gtw tls on an HTTP listener": ("""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: foo}
spec:
  gatewayClassName: example
  listeners: [{name: http, port: 80, protocol: HTTP, tls: {certificateRefs: [{name: cert}]}}]
""", INVALID, "spec.listeners: Invalid value: \"array\": tls must not be specified for protocols "
     "['HTTP', 'TCP', 'UDP']"),
    "gtw same port, protocol and hostname twice": ("""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: foo}
spec:
  gatewayClassName: example
  listeners: [{name: a, port: 80, protocol: HTTP}, {name: b, port: 80, protocol: HTTP}]
""", INVALID, "Combination of port, protocol and hostname must be unique for each listener"),
    "gtw infrastructure label key not a label key": ("""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: foo}
spec:
  gatewayClassName: example
  infrastructure: {labels: {"-team": platform}}
  listeners: [{name: http, port: 80, protocol: HTTP}]
""", INVALID, "spec.infrastructure.labels: Invalid value: \"object\": Label keys must be in the form of an "
     "optional DNS subdomain prefix followed by a required name segment of up to 63 characters."),
    "grpcroute method match with neither service nor method": ("""
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: x, namespace: foo}
spec:
  rules: [{matches: [{method: {}}]}]
""", INVALID, "spec.rules[0].matches[0].method: Invalid value: \"object\": One or both of 'service' or "
     "'method' must be specified"),
    "grpcroute service with invalid characters": ("""
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: x, namespace: foo}
spec:
  rules: [{matches: [{method: {service: "com.example/User", method: Login}}]}]
""", INVALID, "service must only contain valid characters"),
    "grpcroute v1alpha2 is not served by the standard channel": ("""
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: GRPCRoute
metadata: {name: x, namespace: foo}
spec: {}
""", NO_MATCH, 'no matches for kind "GRPCRoute" in version "gateway.networking.k8s.io/v1alpha2"'),
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
