package auth

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/meterline/meterline/internal/filewatch"
)

// MaxTokensFileBytes caps the tokens file.
const MaxTokensFileBytes = 1 << 20

// tokensFile is the content of the tokens file.
type tokensFile struct {
	Tokens []TokenConfig `yaml:"tokens"`
}

// ParseTokensFile decodes the tokens file: a YAML document
//
//	tokens:
//	  - name: edge-1
//	    sha256: <hex SHA-256 of the token>
//	    scopes: [ingest]
//	    expires: 2027-01-31T00:00:00Z   # optional
//
// Unknown fields, a second document and an empty document are errors (an
// empty file is more often half written than meant; write "tokens: []").
// The entries are validated by LoadFile, together with the inline ones.
func ParseTokensFile(data []byte) ([]TokenConfig, error) {
	if len(data) > MaxTokensFileBytes {
		return nil, fmt.Errorf("larger than %d bytes", MaxTokensFileBytes)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var f tokensFile
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("the document is empty (write \"tokens: []\" for no tokens)")
		}
		if strings.Contains(err.Error(), "parsing time") {
			return nil, fmt.Errorf("expires: %w (write an RFC 3339 time like 2027-01-31T00:00:00Z)", err)
		}
		return nil, err
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one YAML document")
	}
	return f.Tokens, nil
}

// ReadTokensFile reads a tokens file of at most MaxTokensFileBytes.
func ReadTokensFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, MaxTokensFileBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxTokensFileBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, MaxTokensFileBytes)
	}
	return data, nil
}

// LoadFile replaces the tokens file's entries with those of data, kept
// with the inline ones given to New. On any error (a malformed file, an
// invalid entry, a name or hash twice) the tokens in force stay. It
// returns the number of tokens in the file.
func (t *Tokens) LoadFile(data []byte) (int, error) {
	file, err := ParseTokensFile(data)
	if err != nil {
		return 0, err
	}
	s, err := build(t.inline, file)
	if err != nil {
		return 0, err
	}
	s.fileSum = sha256.Sum256(data)
	t.set.Store(s)
	return len(file), nil
}

// LoadFilePath reads the tokens file at path and loads it (LoadFile).
func (t *Tokens) LoadFilePath(path string) error {
	data, err := ReadTokensFile(path)
	if err != nil {
		return fmt.Errorf("auth.tokens_file: %w", err)
	}
	if _, err := t.LoadFile(data); err != nil {
		return fmt.Errorf("auth.tokens_file %s: %w", path, err)
	}
	return nil
}

// Len is the number of tokens in force, expired ones included.
func (t *Tokens) Len() int { return len(t.current().entries) }

// WatchFile polls the tokens file at path every interval (10s when every
// <= 0) until ctx ends and loads a changed, valid file, so tokens are
// added, rotated and removed without a restart. An invalid file is logged
// once per content and the tokens in force stay. result, when not nil,
// counts each reload by outcome ("success" or "error").
func (t *Tokens) WatchFile(ctx context.Context, path string, every time.Duration, log *slog.Logger, result func(string)) {
	t.watcher(path, log, result).Run(ctx, every)
}

func (t *Tokens) watcher(path string, log *slog.Logger, result func(string)) *filewatch.Watcher {
	return &filewatch.Watcher{
		Path:   path,
		What:   "tokens",
		Read:   ReadTokensFile,
		Loaded: func() [sha256.Size]byte { return t.current().fileSum },
		Apply: func(data []byte) ([]any, error) {
			n, err := t.LoadFile(data)
			return []any{"tokens", n}, err
		},
		Result: result,
		Log:    log,
	}
}
