// Command kstatus prints the kstatus verdict (InProgress, Current, Failed, …)
// and its message for the Kubernetes object read as JSON on stdin, computed
// by the library Flux and cli-utils-based tools use to wait for resources.
package main

import (
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	// This decoder keeps integers as int64, as kstatus expects of metadata.generation.
	var object map[string]interface{}
	if err := json.Unmarshal(data, &object); err != nil {
		fail(err)
	}
	result, err := status.Compute(&unstructured.Unstructured{Object: object})
	if err != nil {
		fail(err)
	}
	fmt.Printf("%s\n%s\n", result.Status, result.Message)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "kstatus:", err)
	os.Exit(1)
}
