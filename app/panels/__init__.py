"""Parts of pages that are big enough to read on their own: the Train page's form and run monitor, the Data page's
velocity computation, the Inspect page's Δz-vs-velocity tab. Like the views, they only draw ``core`` results."""
