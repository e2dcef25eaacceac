#!/usr/bin/env bash
# End to end on a kind cluster: the EPP image, the official Gateway API and Inference Extension
# CRDs, a gateway (Istio by default; GATEWAY=envoy-gateway or kgateway), our manifests, and
# requests through the gateway for the aggregated and then the P/D overlay.
# Needs docker (with a running engine), kind, kubectl and helm; without them it says so and
# exits 0, so `make kind-e2e` is harmless on machines that cannot run it. See README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER=${CLUSTER:-epp-e2e}
GATEWAY=${GATEWAY:-istio}
GATEWAY_API_VERSION=${GATEWAY_API_VERSION:-v1.4.0}
GIE_VERSION=${GIE_VERSION:-v1.5.0}
ISTIO_VERSION=${ISTIO_VERSION:-1.28.1}
ENVOY_GATEWAY_VERSION=${ENVOY_GATEWAY_VERSION:-v1.6.0}
AI_GATEWAY_VERSION=${AI_GATEWAY_VERSION:-v0.4.0}
KGATEWAY_VERSION=${KGATEWAY_VERSION:-v2.1.0}
KEEP_CLUSTER=${KEEP_CLUSTER:-false}
MODEL=meta-llama/Llama-3.1-8B-Instruct

log() { printf '\n== %s\n' "$*"; }

missing=()
command -v kind >/dev/null || missing+=("kind")
command -v kubectl >/dev/null || missing+=("kubectl")
command -v helm >/dev/null || missing+=("helm")
if ! command -v docker >/dev/null; then
  missing+=("docker")
elif ! docker info >/dev/null 2>&1; then
  missing+=("a running Docker engine")
fi
if ((${#missing[@]})); then
  echo "kind e2e skipped: missing on this machine: $(IFS=,; echo "${missing[*]}" | sed 's/,/, /g')."
  echo "It needs docker (engine running), kind, kubectl and helm; see e2e/kind/README.md."
  exit 0
fi
case "$GATEWAY" in istio | envoy-gateway | kgateway) ;; *)
  echo "GATEWAY must be istio, envoy-gateway or kgateway, not '$GATEWAY'" >&2
  exit 2
  ;;
esac

cleanup() {
  if [[ "$KEEP_CLUSTER" != true ]]; then
    log "deleting cluster $CLUSTER (KEEP_CLUSTER=true keeps it)"
    kind delete cluster --name "$CLUSTER"
  fi
}

log "cluster $CLUSTER"
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
trap cleanup EXIT
kubectl config use-context "kind-$CLUSTER"

log "image epp:dev (serve, sidecar and sim)"
docker build -t epp:dev .
kind load docker-image epp:dev --name "$CLUSTER"

log "CRDs: Gateway API $GATEWAY_API_VERSION, Inference Extension $GIE_VERSION"
kubectl apply --server-side -f "https://github.com/kubernetes-sigs/gateway-api/releases/download/$GATEWAY_API_VERSION/standard-install.yaml"
kubectl apply --server-side -f "https://github.com/kubernetes-sigs/gateway-api-inference-extension/releases/download/$GIE_VERSION/manifests.yaml"

log "gateway: $GATEWAY"
case "$GATEWAY" in
istio)
  helm repo add istio https://istio-release.storage.googleapis.com/charts --force-update >/dev/null
  helm upgrade --install istio-base istio/base -n istio-system --create-namespace --version "$ISTIO_VERSION" --wait
  helm upgrade --install istiod istio/istiod -n istio-system --version "$ISTIO_VERSION" --wait \
    --set pilot.env.ENABLE_GATEWAY_API_INFERENCE_EXTENSION=true
  ;;
envoy-gateway)
  helm upgrade --install eg oci://docker.io/envoyproxy/gateway-helm --version "$ENVOY_GATEWAY_VERSION" \
    -n envoy-gateway-system --create-namespace -f gateway-api/envoy-gateway/envoy-gateway-values.yaml --wait
  helm upgrade --install aieg-crd oci://docker.io/envoyproxy/ai-gateway-crds-helm --version "$AI_GATEWAY_VERSION" \
    -n envoy-ai-gateway-system --create-namespace --wait
  helm upgrade --install aieg oci://docker.io/envoyproxy/ai-gateway-helm --version "$AI_GATEWAY_VERSION" \
    -n envoy-ai-gateway-system --create-namespace --wait
  ;;
kgateway)
  helm upgrade --install kgateway-crds oci://cr.kgateway.dev/kgateway-dev/charts/kgateway-crds \
    --version "$KGATEWAY_VERSION" -n kgateway-system --create-namespace --wait
  helm upgrade --install kgateway oci://cr.kgateway.dev/kgateway-dev/charts/kgateway \
    --version "$KGATEWAY_VERSION" -n kgateway-system --set inferenceExtension.enabled=true --wait
  ;;
esac

# The gateway's in-cluster Service, whatever namespace and name the implementation gives it.
gateway_url() {
  local svc
  for selector in gateway.networking.k8s.io/gateway-name=inference-gateway \
    gateway.envoyproxy.io/owning-gateway-name=inference-gateway; do
    svc=$(kubectl get svc -A -l "$selector" -o jsonpath='{range .items[0]}{.metadata.name}.{.metadata.namespace}{end}')
    if [[ -n "$svc" ]]; then
      echo "http://$svc.svc.cluster.local:80"
      return
    fi
  done
  echo "no Service found for Gateway inference-gateway" >&2
  return 1
}

# N completions from inside the cluster (our own image, so nothing else is pulled); fails unless
# every one is answered 200.
send_requests() {
  local url=$1 count=$2 prompt=$3
  kubectl run "client-$RANDOM" --rm -i --restart=Never --image=epp:dev --image-pull-policy=IfNotPresent \
    --command -- python -c '
import json, sys, urllib.request
url, count, model, prompt = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
for i in range(count):
    body = json.dumps({"model": model, "prompt": f"{prompt} {i}", "max_tokens": 8}).encode()
    request = urllib.request.Request(url + "/v1/completions", body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        reply = json.load(response)
        print(response.status, response.headers.get("x-inference-host"), reply["usage"])
' "$url" "$count" "$MODEL" "$prompt"
}

deploy() {
  local overlay=$1
  log "manifests: $overlay overlay + $GATEWAY gateway"
  kubectl apply -k "manifests/overlays/$overlay"
  kubectl apply -k "gateway-api/$GATEWAY"
  kubectl rollout status deployment --timeout=300s
  kubectl wait --for=condition=Programmed gateway/inference-gateway --timeout=300s
}

deploy aggregated
url=$(gateway_url)
log "aggregated: requests through $url"
send_requests "$url" 10 "Hello from the aggregated pool"

kubectl delete -k manifests/overlays/aggregated --ignore-not-found
deploy pd
log "P/D: long prompts, so the decider sends them to a prefill pod first"
send_requests "$url" 5 "$(printf 'a long shared context %.0s' {1..64})"
prefilled=0
for prefill_pod in $(kubectl get pods -l llm-d.ai/role=prefill -o name); do
  tokens=$(kubectl exec "$prefill_pod" -- python -c '
import urllib.request
page = urllib.request.urlopen("http://127.0.0.1:8000/metrics", timeout=5).read().decode()
print(int(sum(float(l.split()[-1]) for l in page.splitlines() if l.startswith("vllm:sim_prefill_only_requests_total"))))
')
  echo "$prefill_pod: $tokens prefill-only requests"
  prefilled=$((prefilled + tokens))
done
if ((prefilled == 0)); then
  echo "P/D: no request reached a prefill pod" >&2
  exit 1
fi
log "kind e2e passed ($GATEWAY)"
