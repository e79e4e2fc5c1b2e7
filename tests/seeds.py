"""The five seeds' own example events (../shared/seeds/), shared by the unit and integration tests."""

from __future__ import annotations

from typing import Any

AGORA_LEAD_CREATED: dict[str, Any] = {
    "event": "lead.created",
    "campaign_id": 7,
    "lead_id": 1234,
    "contact_id": 5678,
    "timestamp": "2026-06-12T20:00:00Z",
}
AGORA_BULK: dict[str, Any] = {
    "event": "leads.bulk_created",
    "campaign_id": 7,
    "count": 10,
    "leads": [{"lead_id": 1234, "contact_id": 5678}, {"lead_id": 1235, "contact_id": 5679}],
    "timestamp": "2026-06-12T20:00:00Z",
}
# "All other events", exactly as the seed prints it (its placeholder field included).
AGORA_STATUS_CHANGED: dict[str, Any] = {
    "event": "lead.status_changed",
    "campaign_id": 7,
    "timestamp": "2026-06-12T20:00:00Z",
    "...event-specific fields...": "...",
}
LEADTERRA_REPLY: dict[str, Any] = {
    "event": "reply.received",
    "timestamp": "2026-06-12T20:00:00Z",
    "data": {"replyId": "rep_001", "campaignId": "camp_42", "from": "jane@example.com", "classification": "positive"},
}
CONVOCORE_AGENT_CREATED: dict[str, Any] = {
    "type": "agent_created",
    "payload": {
        "agentId": "agent_123456",
        "agentName": "Customer Support Bot",
        "agentPlatform": "vf",
        "operation": "created",
        "createdAt": 1718035200000,
        "workspaceSecret": "your_workspace_secret",
    },
}
CONVOCORE_MESSAGE_RECEIVED: dict[str, Any] = {
    "type": "message_received",
    "payload": {
        "agentId": "agent_123456",
        "agentName": "Customer Support Bot",
        "convoId": "convo_789012",
        "messageContent": "Hello, I need help with my order",
        "channel": "whatsapp",
        "messageType": "text",
        "from": "+1234567890",
        "createdAt": 1718035200000,
        "workspaceSecret": "your_workspace_secret",
    },
}
CONVOCORE_LEAD_CAPTURED: dict[str, Any] = {
    "type": "lead_captured",
    "payload": {
        "agentId": "agent_123456",
        "agentName": "Sales Bot",
        "leadName": "Jane Smith",
        "leadEmail": "[email protected]",
        "leadPhone": "+9876543210",
        "channel": "web-chat",
        "operation": "captured",
        "createdAt": 1718035200000,
        "workspaceSecret": "your_workspace_secret",
    },
}
CAMPAIGN_LEAD_DELIVERED: dict[str, Any] = {
    "event": "lead.delivered",
    "leadId": "lead_abc123",
    "submissionId": "sub_xyz789",
    "campaignId": "ABC",
    "status": "delivered",
    "timestamp": "2024-06-15T10:30:00Z",
    "data": {"firstName": "John", "lastName": "Doe", "email": "john@example.com", "phone": "+15551234567"},
}
CRM_LEAD_CREATE: dict[str, Any] = {
    "id_space": "eb8edc65-129a-4cb6-abbe-6bf8979c0658",
    "event": "lead.create",
    "secret": "wh_a46f35f22d9723a",
    "payload": {
        "id": "e106db1f-aba3-40ba-97a7-507b54757ef8",
        "email": None,
        "company": None,
        "created_at": "2023-04-29T11:13:55.021Z",
        "first_name": "Jean",
        "icebreaker": "",
        "last_name": "remove",
        "is_deleted": False,
        "order": 0,
        "contract_value": 0,
        "id_space": "eb8edc65-129a-4cb6-abbe-6bf8979c0658",
    },
}
