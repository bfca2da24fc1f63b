"""The example's one route."""

from django.urls import path

from reviews_site import views

urlpatterns = [path("reviews/<int:product_id>", views.reviews)]
