package store

import (
	"context"
	"errors"
	"strings"
)

// environmentCodes are ClickHouse error codes that describe the engine, its
// storage, its permissions or its schema rather than the rows of a
// statement: the same statement succeeds once an operator (or time) clears
// the condition. Names verified with errorCodeToName on the embedded engine.
var environmentCodes = map[int]bool{
	16:  true, // NO_SUCH_COLUMN_IN_TABLE: the schema is not the one expected
	60:  true, // UNKNOWN_TABLE
	74:  true, // CANNOT_READ_FROM_FILE_DESCRIPTOR
	75:  true, // CANNOT_WRITE_TO_FILE_DESCRIPTOR
	76:  true, // CANNOT_OPEN_FILE
	77:  true, // CANNOT_CLOSE_FILE
	81:  true, // UNKNOWN_DATABASE
	107: true, // FILE_DOESNT_EXIST
	164: true, // READONLY
	173: true, // CANNOT_ALLOCATE_MEMORY
	192: true, // UNKNOWN_USER
	193: true, // WRONG_PASSWORD
	194: true, // REQUIRED_PASSWORD
	195: true, // IP_ADDRESS_NOT_ALLOWED
	225: true, // NO_ZOOKEEPER
	236: true, // ABORTED
	243: true, // NOT_ENOUGH_SPACE
	279: true, // ALL_CONNECTION_TRIES_FAILED
	286: true, // UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE
	291: true, // DATABASE_ACCESS_DENIED
	394: true, // QUERY_WAS_CANCELLED
	425: true, // SYSTEM_ERROR
	439: true, // CANNOT_SCHEDULE_TASK
	497: true, // ACCESS_DENIED
	516: true, // AUTHENTICATION_FAILED
}

// environmentTexts are operating-system failures that ClickHouse reports
// under generic codes (STD_EXCEPTION, CANNOT_WRITE_TO_FILE_DESCRIPTOR, ...)
// with the errno text in the message.
var environmentTexts = []string{
	"no space left on device",   // ENOSPC
	"disk quota exceeded",       // EDQUOT
	"read-only file system",     // EROFS
	"permission denied",         // EACCES
	"operation not permitted",   // EPERM
	"input/output error",        // EIO
	"too many open files",       // EMFILE
	"cannot allocate memory",    // ENOMEM
	"not enough space",          // NOT_ENOUGH_SPACE without its code
	"cannot reserve",            // space reservation on a disk
	"table is in readonly mode", // replicated table without Keeper
}

// IsEnvironmental reports whether err describes the environment of a
// statement (the engine unreachable or overloaded, its disk full or
// read-only, access denied, the query cancelled, the schema missing) rather
// than the statement or its rows. Such a failure says nothing about the
// data: callers must wait and retry, never discard the rows.
//
// TOO_MANY_PARTS is environmental (merges are behind) except when the one
// insert block spans too many partitions, which is a property of its rows.
// A false result is no proof that the rows are at fault: an unknown error
// may still be the environment's, which only a known-good insert can tell.
func IsEnvironmental(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var qe *QueryError
	if errors.As(err, &qe) {
		if qe.Code == 252 && strings.Contains(strings.ToLower(qe.Message), "single insert block") {
			return false
		}
		if transientCodes[qe.Code] || environmentCodes[qe.Code] {
			return true
		}
	} else if errors.Is(err, ErrUnavailable) {
		return true
	}
	msg := strings.ToLower(err.Error())
	for _, t := range environmentTexts {
		if strings.Contains(msg, t) {
			return true
		}
	}
	return false
}
