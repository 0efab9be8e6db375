package store

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// memFile puts data into an anonymous memory file (memfd_create) and
// returns the path through which this process opens it. The file has no
// name in any file system; closing it (done) frees the memory. Like any
// process memory it can be swapped out.
func memFile(data []byte) (path string, done func(), err error) {
	fd, err := unix.MemfdCreate("meterline-insert", unix.MFD_CLOEXEC)
	if err != nil {
		return "", nil, fmt.Errorf("%w: memfd_create: %v", errNoMemFile, err)
	}
	for rest := data; len(rest) > 0; {
		n, err := unix.Write(fd, rest)
		if err != nil {
			unix.Close(fd)
			return "", nil, fmt.Errorf("writing the insert's memory file: %w", err)
		}
		rest = rest[n:]
	}
	return fmt.Sprintf("/proc/self/fd/%d", fd), func() { unix.Close(fd) }, nil
}
