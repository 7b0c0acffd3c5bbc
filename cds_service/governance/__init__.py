"""Protocol governance: change impact by replay (`compare`) and the alert report (`report`)."""
