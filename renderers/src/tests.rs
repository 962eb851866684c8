//! Unit tests of the render pipeline over in-memory repositories.
