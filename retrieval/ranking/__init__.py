"""The ranker's stages, one module each: its weights (weights), feature computation (scoring),
fitting (fitting), candidate generation (candidates), serving (serving) and the build that
trains and fits it for an index folder (build). retrieval.ranker is their public face."""
