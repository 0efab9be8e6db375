package store

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

// TestIsEnvironmental classifies the failures the sink meets: the
// environment's (it must stall) and the statement's (its rows may be blamed
// once a known-good insert succeeds), as both engines report them.
func TestIsEnvironmental(t *testing.T) {
	cases := []struct {
		err  error
		want bool
	}{
		{engineError("Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space. (NOT_ENOUGH_SPACE)"), true},
		{engineError("Code: 164. DB::Exception: Cannot execute query in readonly mode. (READONLY)"), true},
		{engineError("Code: 497. DB::Exception: default: Not enough privileges. (ACCESS_DENIED)"), true},
		{engineError("Code: 394. DB::Exception: Query was cancelled. (QUERY_WAS_CANCELLED)"), true},
		{engineError("Code: 1001. DB::Exception: std::exception. filesystem error: in create_directories: Read-only file system [\"/x\"]. (STD_EXCEPTION)"), true},
		{engineError("Code: 75. DB::Exception: Cannot write to file /x: , errno: 28, strerror: No space left on device. (CANNOT_WRITE_TO_FILE_DESCRIPTOR)"), true},
		{engineError("Code: 60. DB::Exception: Table meterline.events does not exist. (UNKNOWN_TABLE)"), true},
		{engineError("Code: 252. DB::Exception: Too many parts (3000). Merges are processing significantly slower than inserts. (TOO_MANY_PARTS)"), true},
		{&QueryError{Code: 252, Message: "code: 252, message: Too many partitions for single INSERT block (more than 100)."}, false},
		{engineError("Code: 53. DB::Exception: Type mismatch in IN or VALUES section. (TYPE_MISMATCH)"), false},
		{engineError("Code: 27. DB::Exception: Cannot parse input: expected ',' before: 'x'. (CANNOT_PARSE_INPUT_ASSERTION_FAILED)"), false},
		{engineError("Code: 1002. DB::Exception: Unexpected failure. (UNKNOWN_EXCEPTION)"), false},
		{fmt.Errorf("store: insert into events: %w", engineError("Code: 243. DB::Exception: not enough space. (NOT_ENOUGH_SPACE)")), true},
		{fmt.Errorf("%w: connection refused", ErrUnavailable), true},
		{fmt.Errorf("store: insert: %w", context.DeadlineExceeded), true},
		{errors.New("store: insert into events: row 3 column \"status\": unsupported value"), false},
		{nil, false},
	}
	for _, c := range cases {
		if got := IsEnvironmental(c.err); got != c.want {
			t.Errorf("IsEnvironmental(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
