package ship

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/meterline/meterline/schemas"
)

// maxConns bounds the connections read at once; Caddy opens one per
// logger. More are closed at once (and logged): the listener is meant to
// be private, and a flood of connections must not exhaust the shipper.
const maxConns = 64

// tcpLine is one line read from a connection.
type tcpLine struct {
	data      []byte
	oversized bool
	from      string
}

// runTCP listens for Caddy's `output net`: each connection carries one
// JSON entry per line. Lines are batched from every connection; a batch
// the collector does not answer within max_retry_time is dropped and
// counted (there is no position to come back to).
func (s *Shipper) runTCP(ctx context.Context) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	return s.serveTCP(ctx, ln)
}

func (s *Shipper) serveTCP(ctx context.Context, ln net.Listener) error {
	s.log.Info("shipping the Caddy access log from TCP", "listen", ln.Addr().String(), "collector", s.cfg.Endpoint)
	lines := make(chan tcpLine, 1024)
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	acceptErr := make(chan error, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				acceptErr <- err
				return
			}
			mu.Lock()
			if len(conns) >= maxConns {
				mu.Unlock()
				s.log.Warn("access log connection refused: too many open", "from", c.RemoteAddr().String(), "max", maxConns)
				c.Close()
				continue
			}
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.readConn(ctx, c, lines)
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			}()
		}
	}()
	stopped := make(chan struct{})
	go func() {
		<-ctx.Done()
		ln.Close()
		mu.Lock()
		for c := range conns {
			// Stop reading; lines already read are still shipped.
			_ = c.SetReadDeadline(time.Now())
		}
		mu.Unlock()
		wg.Wait()
		close(stopped)
	}()

	pctx, cancel := s.postContext(ctx)
	defer cancel()
	var batch []schemas.Event
	tick := time.NewTicker(s.cfg.FlushInterval)
	defer tick.Stop()
	flush := func() error {
		err := s.post(pctx, batch, true)
		batch = batch[:0]
		return err
	}
	for {
		select {
		case l := <-lines:
			batch = s.consume(l.data, l.oversized, l.from, batch)
			if len(batch) >= s.cfg.BatchSize {
				if err := flush(); err != nil {
					return s.stopErr(ctx, err)
				}
			}
		case <-tick.C:
			if err := flush(); err != nil {
				return s.stopErr(ctx, err)
			}
		case err := <-acceptErr:
			if ctx.Err() == nil {
				return fmt.Errorf("accept: %w", err)
			}
			acceptErr = nil
		case <-stopped:
		drain:
			for {
				select {
				case l := <-lines:
					batch = s.consume(l.data, l.oversized, l.from, batch)
				default:
					break drain
				}
			}
			if err := flush(); err != nil {
				return s.stopErr(ctx, err)
			}
			s.log.Info("shipper stopped")
			return nil
		}
	}
}

// readConn reads lines of at most MaxLineBytes from c into lines.
func (s *Shipper) readConn(ctx context.Context, c net.Conn, lines chan<- tcpLine) {
	defer c.Close()
	from := "tcp " + c.RemoteAddr().String()
	r := bufio.NewReaderSize(c, 64<<10)
	var buf []byte
	oversized := false
	for {
		frag, err := r.ReadSlice('\n')
		switch {
		case err == nil:
			var l tcpLine
			if oversized || len(buf)+len(frag)-1 > s.cfg.MaxLineBytes {
				l = tcpLine{oversized: true, from: from}
			} else {
				buf = append(buf, frag[:len(frag)-1]...)
				l = tcpLine{data: bytes.Clone(buf), from: from}
			}
			buf, oversized = buf[:0], false
			select {
			case lines <- l:
			case <-ctx.Done():
				return
			}
		case errors.Is(err, bufio.ErrBufferFull):
			if !oversized {
				buf = append(buf, frag...)
				if len(buf) > s.cfg.MaxLineBytes {
					buf, oversized = buf[:0], true
				}
			}
		default:
			if len(buf) > 0 || len(frag) > 0 || oversized {
				if !errors.Is(err, io.EOF) && ctx.Err() == nil {
					s.log.Warn("access log connection ended inside a line; the partial line is skipped", "from", from, "err", err)
				}
				s.m.read.Inc()
				s.m.skipped.WithLabelValues(SkipMalformed).Inc()
			}
			return
		}
	}
}
