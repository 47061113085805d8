"""What go-live and monitoring share: a connection's live state, the EHR's maintenance windows and
the production traffic the product sends through the portal.

The go-live wing writes these (cutover, rollback, pilot, the read API's counts); the monitoring wing
reads them (which connections to check, planned downtime, traffic alerts). Neither wing imports the
other: both sit above this package.
"""
