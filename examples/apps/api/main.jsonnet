// The api Deployment. `env` comes from the bundle's extVars, `replicas` is a top-level argument.
function(replicas=1)
  local env = std.extVar('env');
  [
    {
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: { name: 'api', namespace: 'shop', labels: { app: 'api', env: env } },
      spec: {
        replicas: replicas,
        selector: { matchLabels: { app: 'api' } },
        template: {
          metadata: { labels: { app: 'api', env: env } },
          spec: { containers: [{ name: 'api', image: 'registry.example.com/shop/api:2.3.1' }] },
        },
      },
    },
  ]
