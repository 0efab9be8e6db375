//go:build !unix

package main

// detachStdin is a no-op where the embedded engine does not run.
func detachStdin() {}
