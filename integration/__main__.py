from integration.runner import main

raise SystemExit(main())
