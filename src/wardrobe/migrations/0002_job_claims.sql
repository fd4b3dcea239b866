-- A fencing token per claim: every write of a claimed run names the claim it holds, so a run whose lease expired
-- and was taken over changes nothing when it finishes late.
ALTER TABLE jobs ADD COLUMN claim uuid;
