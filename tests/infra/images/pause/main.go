// Command pause is the sandbox ("infra") container of a kubesky test node's pods, standing in for
// the kubelet's pause image where none can be pulled. It holds the pod's namespaces open by doing
// nothing, reaps the zombies it inherits when it is PID 1 of a pod sharing its PID namespace, and
// exits 0 on SIGTERM or SIGINT, as the kubelet expects when it stops the sandbox.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

const version = "kubesky-pause 3.10"

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "-v" || os.Args[1] == "--version") {
		fmt.Println(version)
		return
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "pause: warning: not PID 1, orphaned processes will not be reaped here")
	}
	// Buffered: signals arriving while a reap is under way are kept, and several SIGCHLDs that
	// collapse into one are still all handled because reap() drains every exited child.
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range sigs {
		if sig == syscall.SIGCHLD {
			reap()
			continue
		}
		fmt.Fprintf(os.Stderr, "pause: %v, exiting\n", sig)
		os.Exit(0)
	}
}

// reap collects every child that has exited, without blocking on those still running.
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil || pid <= 0 { // ECHILD: no children left; 0: the rest are still running
			return
		}
	}
}
