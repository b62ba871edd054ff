// Builds the helm client the chart tests run, from helm.sh/helm/v3.
module kubesky.io/infra/helm

go 1.25.0

require helm.sh/helm/v3 v3.19.5
