// Package privacy carries out data subjects' rights over what Meterline
// stores: export (access and portability) and erasure of a customer's data,
// account deletion (an erasure scheduled after a grace period), the sink's
// list of erased customers, and the audit trail of all of it.
//
// Which tables hold a customer's data is not a hand-kept list: every table
// of the database with a customer_id column is found in system.columns, so a
// table added by a later migration is exported and erased without a change
// here. What erasure does to a table depends on its class (see Class): rows
// of usage data are deleted, accounting records are pseudonymised, and the
// privacy records themselves are kept as proof.
package privacy

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/meterline/meterline/store"
)

// Class says what an erasure does to a table's rows of the customer.
type Class string

const (
	// Delete removes the rows: raw events, rollups, alert deliveries, and
	// any table this package does not know.
	Delete Class = "delete"
	// Pseudonymise replaces customer_id by the erasure's pseudonym and
	// keeps the rows: billing records that accounting law requires to keep.
	// They hold Stripe ids, windows and quantities, no usage details.
	Pseudonymise Class = "pseudonymise"
	// Keep leaves the rows: the privacy requests and audit trail, which
	// prove that the erasure happened.
	Keep Class = "keep"
)

// classes are the tables whose class is not Delete.
var classes = map[string]Class{
	"billing_ledger":   Pseudonymise,
	"billing_invoices": Pseudonymise,
	"privacy_erasures": Keep,
	"privacy_audit":    Keep,
}

// Table is one table that holds customer data.
type Table struct {
	Name  string
	Class Class
	// TimeColumn is the table's first DateTime column; exports read the
	// table in slices of it. Empty when the table has none.
	TimeColumn string
	// HasAPIKey tells whether the table has an api_key_id column.
	HasAPIKey bool
	// Final tells whether the table is a ReplacingMergeTree read with FINAL.
	Final bool
	// Columns are the table's columns in order; AggregateFunction columns
	// are marked, because an export finalises them.
	Columns []Column

	// ident and timeIdent are Name and TimeColumn quoted for SQL.
	ident, timeIdent string
}

// Column is one column of a Table.
type Column struct {
	Name string
	Type string
	// ExportName is the column's name in exports: a state column x_state is
	// exported finalised as x.
	ExportName string

	ident, exportIdent string // Name and ExportName quoted for SQL
}

// Aggregate tells whether the column holds an aggregate function state.
func (c Column) Aggregate() bool { return strings.HasPrefix(c.Type, "AggregateFunction(") }

// Tables returns every table of the current database that has a
// customer_id column, in name order.
func Tables(ctx context.Context, db store.Conn) ([]Table, error) {
	rows, err := db.Query(ctx, tablesSQL)
	if err != nil {
		return nil, fmt.Errorf("privacy: listing tables: %w", err)
	}
	defer rows.Close()
	byName := map[string]*Table{}
	var names []string
	for rows.Next() {
		var table, col, typ, engine string
		if err := rows.Scan(&table, &col, &typ, &engine); err != nil {
			return nil, err
		}
		t := byName[table]
		if t == nil {
			class, ok := classes[table]
			if !ok {
				class = Delete
			}
			t = &Table{Name: table, Class: class, Final: strings.Contains(engine, "ReplacingMergeTree")}
			if t.ident, err = store.QuoteName(table); err != nil {
				return nil, fmt.Errorf("privacy: %w", err)
			}
			byName[table] = t
			names = append(names, table)
		}
		c := Column{Name: col, Type: typ, ExportName: col}
		if c.Aggregate() {
			c.ExportName = strings.TrimSuffix(col, "_state")
			if c.ExportName == col {
				c.ExportName += "_value"
			}
		}
		var err error
		if c.ident, err = store.QuoteName(col); err == nil {
			c.exportIdent, err = store.QuoteName(c.ExportName)
		}
		if err != nil {
			return nil, fmt.Errorf("privacy: table %s: %w", table, err)
		}
		t.Columns = append(t.Columns, c)
		if col == "api_key_id" {
			t.HasAPIKey = true
		}
		if t.TimeColumn == "" && strings.HasPrefix(typ, "DateTime") {
			t.TimeColumn, t.timeIdent = col, c.ident
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("privacy: listing tables: %w", err)
	}
	sort.Strings(names)
	out := make([]Table, len(names))
	for i, n := range names {
		out[i] = *byName[n]
	}
	return out, nil
}
