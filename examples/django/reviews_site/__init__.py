"""reviews, a meshed Django service (the example of docs/integrations/django.md)."""
