// Loaded before the page renders (not deferred): styles can tell a page with scripts apart.
document.documentElement.classList.add("js");
