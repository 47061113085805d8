"""Validation rules: the US Core rule table and the helpers that read FHIR JSON safely."""
