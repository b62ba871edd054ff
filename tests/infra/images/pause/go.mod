module kubesky.io/tests/infra/images/pause

go 1.22
