"""The reading layer: FHIR JSON -> typed values. The only place that knows FHIR shapes (dates, quantities,
codes, medications, observations, conditions, administrations); it never knows a clinical threshold.

Facts (`cds_service.facts`) read records only through these modules (clinical specification section 12).
"""
