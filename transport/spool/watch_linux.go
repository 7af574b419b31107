//go:build linux

package spool

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// dirWatch signals on events when a file is renamed or written into a
// directory. The descriptor is non-blocking, so the runtime poller serves
// its reads and Close ends the reading goroutine.
type dirWatch struct {
	f      *os.File
	events chan struct{}
}

func watchDir(dir string) (*dirWatch, error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("failed to watch %s: %w", dir, err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_MOVED_TO|unix.IN_CLOSE_WRITE|unix.IN_ONLYDIR); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("failed to watch %s: %w", dir, err)
	}
	w := &dirWatch{f: os.NewFile(uintptr(fd), "inotify:"+dir), events: make(chan struct{}, 1)}
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, err := w.f.Read(buf); err != nil {
				return
			}
			select {
			case w.events <- struct{}{}:
			default: // a wake-up is already pending
			}
		}
	}()
	return w, nil
}

func (w *dirWatch) Close() error { return w.f.Close() }
