package main

import (
	"fmt"
	"io"
	"runtime"
)

// version is set at link time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

func init() {
	register("version", "print the version", func(args []string, _ io.Reader, stdout, _ io.Writer) error {
		_, err := fmt.Fprintf(stdout, "tpuserve %s (%s, %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return err
	})
}
