"""Review: findings of validation runs, waivers, diffs between runs, and the engineers' pages."""
