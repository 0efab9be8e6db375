package ship

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/meterline/meterline/schemas"
)

// position is what the position file holds: the followed file's identity
// (inode) and the offset just after the last line whose event the
// collector answered (or that was skipped).
type position struct {
	File   string `json:"file"`
	Inode  uint64 `json:"inode"`
	Offset int64  `json:"offset"`
}

// loadPosition reads the position file; a missing one is the start.
func loadPosition(path string) (position, bool, error) {
	var p position
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return p, false, nil
	}
	if err != nil {
		return p, false, fmt.Errorf("position file: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil || p.Offset < 0 {
		return p, false, fmt.Errorf("position file %s is corrupt (%s); remove it to ship the log from its start (events already stored are not stored twice: their ids come from the lines)", path, strconv.Quote(string(b[:min(len(b), 80)])))
	}
	return p, true, nil
}

// save writes the position file atomically (a temporary file, fsync,
// rename), so that a crash leaves the old position or the new one.
func (p position) save(path string) error {
	b, _ := json.Marshal(p)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("position file: %w", err)
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("position file: %w", err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// follower reads a growing file line by line, without ever returning a
// line that is not yet complete.
type follower struct {
	path       string
	f          *os.File
	inode      uint64
	off        int64 // offset just after the last line returned
	buf        []byte
	start      int // buf[start:] is unread
	max        int
	discarding bool // inside a line longer than max
	chunk      []byte
}

func openFollower(path string, p position, found bool, max int) (*follower, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, "", err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, "", err
	}
	fw := &follower{path: path, f: f, inode: fileInode(fi), max: max, chunk: make([]byte, 64<<10)}
	note := ""
	switch {
	case !found:
	case p.Inode != 0 && p.Inode != fw.inode:
		note = "the log file was replaced since the position was saved (rotated while stopped); reading the new file from its start"
	case p.Offset > fi.Size():
		note = "the log file is shorter than the saved position (truncated); reading it from its start"
	default:
		fw.off = p.Offset
	}
	if _, err := f.Seek(fw.off, io.SeekStart); err != nil {
		f.Close()
		return nil, "", err
	}
	return fw, note, nil
}

// next returns the next complete line (without its newline) and whether
// it was over the size limit (then the line is empty), or ok false at the
// end of what was written so far.
func (fw *follower) next() (line []byte, oversized, ok bool, err error) {
	for {
		if i := bytes.IndexByte(fw.buf[fw.start:], '\n'); i >= 0 {
			line = fw.buf[fw.start : fw.start+i]
			fw.start += i + 1
			fw.off += int64(i + 1)
			if fw.discarding {
				fw.discarding = false
				return nil, true, true, nil
			}
			if len(line) > fw.max {
				return nil, true, true, nil
			}
			return line, false, true, nil
		}
		if len(fw.buf)-fw.start > fw.max {
			// A line longer than the limit: forget what was read of it,
			// and the rest up to its newline.
			fw.off += int64(len(fw.buf) - fw.start)
			fw.buf, fw.start, fw.discarding = fw.buf[:0], 0, true
		}
		if fw.start > 0 {
			n := copy(fw.buf, fw.buf[fw.start:])
			fw.buf, fw.start = fw.buf[:n], 0
		}
		n, err := fw.f.Read(fw.chunk)
		fw.buf = append(fw.buf, fw.chunk[:n]...)
		if n == 0 {
			if err != nil && !errors.Is(err, io.EOF) {
				return nil, false, false, err
			}
			return nil, false, false, nil
		}
	}
}

// rotated reports whether the path now names another file (rotation) or
// the file shrank below what was read (truncation).
func (fw *follower) rotated() (bool, error) {
	fi, err := os.Stat(fw.path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil // between a rename and the new file's creation
	}
	if err != nil {
		return false, err
	}
	if fileInode(fi) != fw.inode {
		return true, nil
	}
	return fi.Size() < fw.off+int64(len(fw.buf)-fw.start), nil
}

// reopen starts on the file the path names now, from its start.
func (fw *follower) reopen() error {
	f, err := os.Open(fw.path)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	fw.f.Close()
	fw.f, fw.inode, fw.off = f, fileInode(fi), 0
	fw.buf, fw.start, fw.discarding = fw.buf[:0], 0, false
	return nil
}

func (fw *follower) position() position {
	return position{File: fw.path, Inode: fw.inode, Offset: fw.off}
}

// runFile follows the file: lines are batched and posted, and the position
// is saved after each batch the collector answered.
func (s *Shipper) runFile(ctx context.Context) error {
	p, found, err := loadPosition(s.cfg.PositionFile)
	if err != nil {
		return err
	}
	var fw *follower
	for {
		var note string
		fw, note, err = openFollower(s.cfg.File, p, found, s.cfg.MaxLineBytes)
		if err == nil {
			if note != "" {
				s.log.Warn(note, "file", s.cfg.File, "saved_offset", p.Offset)
			}
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("access log: %w", err)
		}
		// Caddy creates the file at its first request: wait for it.
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(s.cfg.PollInterval):
		}
	}
	defer func() { fw.f.Close() }()
	s.log.Info("shipping the Caddy access log", "file", s.cfg.File, "offset", fw.off, "position_file", s.cfg.PositionFile, "collector", s.cfg.Endpoint)
	s.m.position.Set(float64(fw.off))
	pctx, cancel := s.postContext(ctx)
	defer cancel()

	var batch []schemas.Event
	var first time.Time // when the oldest unshipped line was read
	pending := false    // lines read since the last saved position
	commit := func() error {
		if err := s.post(pctx, batch, false); err != nil {
			return err
		}
		batch, pending = batch[:0], false
		pos := fw.position()
		if err := pos.save(s.cfg.PositionFile); err != nil {
			return err
		}
		s.m.position.Set(float64(pos.Offset))
		return nil
	}
	for {
		line, oversized, ok, err := fw.next()
		if err != nil {
			return fmt.Errorf("access log: %w", err)
		}
		if ok {
			if !pending {
				first, pending = time.Now(), true
			}
			batch = s.consume(line, oversized, "offset "+strconv.FormatInt(fw.off, 10), batch)
			if len(batch) >= s.cfg.BatchSize {
				if err := commit(); err != nil {
					return s.stopErr(ctx, err)
				}
			}
			continue
		}
		// At the end of what is written.
		if pending && (time.Since(first) >= s.cfg.FlushInterval || ctx.Err() != nil) {
			if err := commit(); err != nil {
				return s.stopErr(ctx, err)
			}
		}
		if ctx.Err() != nil {
			s.log.Info("shipper stopped", "offset", fw.off)
			return nil
		}
		if rot, err := fw.rotated(); err != nil {
			return fmt.Errorf("access log: %w", err)
		} else if rot {
			if pending {
				if err := commit(); err != nil {
					return s.stopErr(ctx, err)
				}
			}
			if err := fw.reopen(); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("access log: %w", err)
			} else if err == nil {
				s.log.Info("the access log was rotated; following the new file", "file", s.cfg.File)
				continue
			}
		}
		wait := s.cfg.PollInterval
		if pending {
			wait = min(wait, max(s.cfg.FlushInterval-time.Since(first), time.Millisecond))
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}

// stopErr is the error Run returns: none when the stop came first.
func (s *Shipper) stopErr(ctx context.Context, err error) error {
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		s.log.Warn("stopped before the collector answered the last batch; it is sent again at the next start (stored once)")
		return nil
	}
	return err
}
