package billing

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/meterline/meterline/aggregate/limits"
)

// Reporting modes of a plan.
const (
	// ModeMeterEvents reports one Billing Meter event per customer and
	// window, with corrections as further events.
	ModeMeterEvents = "meter_events"
	// ModeUsageRecords reports the period-to-date total on a metered
	// subscription item with action=set (legacy usage records, API
	// 2023-10-16; the price needs aggregate_usage=last_during_period).
	ModeUsageRecords = "usage_records"
)

// MaxMappingBytes caps the mapping file.
const MaxMappingBytes = 10 << 20

// PlanBilling says how the usage of one plan's customers is reported.
type PlanBilling struct {
	// Plan is a plan id of the catalogue (limits.catalogue_file).
	Plan string `yaml:"plan"`
	// Mode is meter_events or usage_records.
	Mode string `yaml:"mode"`
	// EventName is the meter's event_name (meter_events only).
	EventName string `yaml:"event_name,omitempty"`
	// Price is the metered price (price_...) of the plan (usage_records
	// only, optional): `meterline billing sync` finds each customer's
	// subscription item of this price.
	Price string `yaml:"price,omitempty"`
}

// CustomerBilling says which Stripe customer a customer is billed on.
type CustomerBilling struct {
	// ID is the Meterline customer id (as in the catalogue and events).
	ID string `yaml:"id"`
	// StripeCustomerID is the Stripe customer (cus_...).
	StripeCustomerID string `yaml:"stripe_customer_id"`
	// SubscriptionItem is the metered subscription item (si_...) that
	// receives usage records; required when the customer's plan is on
	// usage_records, not allowed otherwise.
	SubscriptionItem string `yaml:"subscription_item,omitempty"`
}

// Mapping is the content of billing.mapping_file.
type Mapping struct {
	Plans     []PlanBilling     `yaml:"plans"`
	Customers []CustomerBilling `yaml:"customers"`

	plans     map[string]*PlanBilling
	customers map[string]*CustomerBilling
	byStripe  map[string]string
}

var (
	stripeCustomerRe = regexp.MustCompile(`^cus_[A-Za-z0-9]{1,250}$`)
	subItemRe        = regexp.MustCompile(`^si_[A-Za-z0-9]{1,250}$`)
	priceRe          = regexp.MustCompile(`^price_[A-Za-z0-9]{1,250}$`)
	eventNameRe      = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,100}$`)
)

// LoadMapping reads and validates the mapping file. With a catalogue, it
// also checks that every customer exists there and that its plan has a
// billing entry (and a subscription item when the plan uses usage
// records). Every problem is reported at once.
func LoadMapping(path string, cat *limits.Catalogue) (*Mapping, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("billing.mapping_file: %w", err)
	}
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, MaxMappingBytes+1))
	if err != nil {
		return nil, fmt.Errorf("billing.mapping_file %s: %w", path, err)
	}
	m, err := ParseMapping(data, cat)
	if err != nil {
		return nil, fmt.Errorf("billing.mapping_file %s: %w", path, err)
	}
	return m, nil
}

// ParseMapping decodes and validates a mapping (see LoadMapping). Unknown
// fields, an empty document and a second document are errors.
func ParseMapping(data []byte, cat *limits.Catalogue) (*Mapping, error) {
	if len(data) > MaxMappingBytes {
		return nil, fmt.Errorf("larger than %d bytes", MaxMappingBytes)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var m Mapping
	if err := dec.Decode(&m); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("the document is empty")
		}
		return nil, err
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one YAML document")
	}
	if err := m.Validate(cat); err != nil {
		return nil, err
	}
	return &m, nil
}

// Validate checks the mapping (and against cat when not nil) and builds
// its indexes. Every problem is reported, each naming its item.
func (m *Mapping) Validate(cat *limits.Catalogue) error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	m.plans = map[string]*PlanBilling{}
	m.customers = map[string]*CustomerBilling{}
	m.byStripe = map[string]string{}
	for i := range m.Plans {
		p := &m.Plans[i]
		name := fmt.Sprintf("plans[%d]", i)
		if p.Plan == "" {
			add("%s: plan is missing", name)
			continue
		}
		name = fmt.Sprintf("plan %q", p.Plan)
		if m.plans[p.Plan] != nil {
			add("%s: listed twice", name)
		}
		m.plans[p.Plan] = p
		switch p.Mode {
		case ModeMeterEvents:
			if !eventNameRe.MatchString(p.EventName) {
				add("%s: event_name %q must be 1-100 characters of [A-Za-z0-9_.:-] (the meter's event_name)", name, p.EventName)
			}
			if p.Price != "" {
				add("%s: price is for usage_records plans only", name)
			}
		case ModeUsageRecords:
			if p.EventName != "" {
				add("%s: event_name is for meter_events plans only", name)
			}
			if p.Price != "" && !priceRe.MatchString(p.Price) {
				add("%s: price %q is not a Stripe price id (price_...)", name, p.Price)
			}
		case "":
			add("%s: mode is missing (meter_events or usage_records)", name)
		default:
			add("%s: mode %q is not meter_events or usage_records", name, p.Mode)
		}
		if cat != nil && !catalogueHasPlan(cat, p.Plan) {
			add("%s: not in the plan catalogue (limits.catalogue_file)", name)
		}
	}
	for i := range m.Customers {
		c := &m.Customers[i]
		name := fmt.Sprintf("customers[%d]", i)
		if c.ID == "" || len(c.ID) > 128 {
			add("%s: id must be 1-128 bytes", name)
			continue
		}
		name = fmt.Sprintf("customer %q", c.ID)
		if m.customers[c.ID] != nil {
			add("%s: listed twice", name)
		}
		m.customers[c.ID] = c
		if !stripeCustomerRe.MatchString(c.StripeCustomerID) {
			add("%s: stripe_customer_id %q is not a Stripe customer id (cus_...)", name, c.StripeCustomerID)
		} else if other, dup := m.byStripe[c.StripeCustomerID]; dup {
			add("%s: stripe_customer_id %s is also customer %q's", name, c.StripeCustomerID, other)
		} else {
			m.byStripe[c.StripeCustomerID] = c.ID
		}
		if c.SubscriptionItem != "" && !subItemRe.MatchString(c.SubscriptionItem) {
			add("%s: subscription_item %q is not a subscription item id (si_...)", name, c.SubscriptionItem)
		}
		if cat == nil {
			continue
		}
		plan, ok := catalogueCustomerPlan(cat, c.ID)
		if !ok {
			add("%s: not in the plan catalogue (limits.catalogue_file)", name)
			continue
		}
		pb := m.plans[plan]
		switch {
		case pb == nil:
			add("%s: its plan %q has no entry under plans", name, plan)
		case pb.Mode == ModeUsageRecords && c.SubscriptionItem == "":
			add("%s: plan %q reports usage records: subscription_item is required (or run `meterline billing sync`)", name, plan)
		case pb.Mode == ModeMeterEvents && c.SubscriptionItem != "":
			add("%s: plan %q reports meter events: subscription_item is not used, remove it", name, plan)
		}
	}
	if len(errs) > 100 {
		errs = append(errs[:100], fmt.Errorf("... and %d more problems", len(errs)-100))
	}
	return errors.Join(errs...)
}

func catalogueHasPlan(cat *limits.Catalogue, id string) bool {
	for _, p := range cat.Plans {
		if p.ID == id {
			return true
		}
	}
	return false
}

func catalogueCustomerPlan(cat *limits.Catalogue, id string) (string, bool) {
	for _, c := range cat.Customers {
		if c.ID == id {
			return c.Plan, true
		}
	}
	return "", false
}

// Customer returns the customer's billing entry.
func (m *Mapping) Customer(id string) (CustomerBilling, bool) {
	if c := m.customers[id]; c != nil {
		return *c, true
	}
	return CustomerBilling{}, false
}

// Plan returns the plan's billing entry.
func (m *Mapping) Plan(id string) (PlanBilling, bool) {
	if p := m.plans[id]; p != nil {
		return *p, true
	}
	return PlanBilling{}, false
}

// CustomerOfStripe returns the Meterline customer billed on a Stripe customer.
func (m *Mapping) CustomerOfStripe(stripeCustomerID string) (string, bool) {
	id, ok := m.byStripe[stripeCustomerID]
	return id, ok
}

// Marshal writes the mapping as YAML.
func (m *Mapping) Marshal() ([]byte, error) {
	var b strings.Builder
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(m); err != nil {
		return nil, err
	}
	return []byte(b.String()), nil
}
