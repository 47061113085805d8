"""Go-live: change windows, the go-live plan and its gate, cutover, rollback, pilot, and the product read API."""
