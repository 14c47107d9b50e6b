"""The routes, one module per resource (each adds its routes to the app, so every route and the
scope it declares stay in one table: `app.routes`); `create_app` adds them all."""
